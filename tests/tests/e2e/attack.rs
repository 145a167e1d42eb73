//! The attack suite: raw bytes against the real `krouter` in front of a mock upstream that
//! records every request it receives. Each case of a table says what the client writes and
//! what it must get: a status (and whether the connection is then closed), or a close
//! without an answer. Every case also checks that no 5xx came back, that the upstream saw
//! nothing of it (unless the case is a request that must get through, exactly once), and
//! that `/healthz` still answers afterwards; each test ends with the process alive.
//!
//! The policies use short `[limits]` so slow-client cases end quickly; every wait in the
//! assertions is generous, because CI is a slow shared machine. Nothing here times how fast
//! krouter is.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use krouter_tests::home::TempHome;
use krouter_tests::krouter::{Krouter, policy};
use krouter_tests::raw::{Outcome, Raw, h2, status_of};
use krouter_tests::upstream::MockUpstream;

use super::metrics::{scrape, value};

/// How long any single answer or close may take to show up.
const WAIT: Duration = Duration::from_secs(20);

/// The `[limits]` of the suite: small and short, so each case ends fast.
const TIGHT_LIMITS: &str = "[limits]
max_header_bytes = 8192
max_headers = 32
header_read_timeout_ms = 2000
keep_alive_idle_ms = 2000
body_read_timeout_ms = 6000
body_min_bytes_per_sec = 1000
body_min_rate_grace_ms = 1000
response_write_timeout_ms = 3000
max_connections = 64

[limits.max_body_bytes]
chat_completions = 4096
embeddings = 1024
";

/// A chat completion the mock answers.
const CHAT: &str = r#"{"model":"chat","messages":[{"role":"user","content":"hi"}]}"#;

/// What a case must end in.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// This status; then the connection closed (`true`) or left open (`false`).
    Status(u16, bool),
    /// No answer; the connection closed.
    Closed,
    /// This status with the connection closed after it, or a close without an answer.
    StatusOrClosed(u16),
}

/// How a case writes its bytes.
enum Write {
    /// All at once.
    All(Vec<u8>),
    /// A first part at once, then the rest one `piece` at a time, `pause` apart.
    Trickle {
        first: Vec<u8>,
        rest: Vec<u8>,
        piece: usize,
        pause: Duration,
    },
    /// Nothing at all.
    Nothing,
}

/// One case of a table.
struct Case {
    name: &'static str,
    write: Write,
    expect: Expect,
    /// Requests the upstream must see because of this case.
    forwarded: usize,
}

/// A krouter with `limits` in front of a recording mock, and an API key.
struct Bench {
    // Dropped last: the home outlives the process using it.
    krouter: Krouter,
    upstream: MockUpstream,
    key: String,
    /// The request id of every error answer so far, with its case: each must be in the log.
    answered: Vec<(String, String)>,
    _home: TempHome,
}

// === the bench ===

impl Bench {
    fn start(limits: &str) -> Self {
        let home = TempHome::init();
        let upstream = MockUpstream::start();
        home.write_policy(&policy(
            2,
            &format!(
                "[[providers]]\nname = \"mock\"\nkind = \"openai-compatible\"\nbase_url = \"{}\"\n\n[[routes]]\nmodel = \"chat\"\ntargets = [\"mock:real-model\"]\n\n{limits}",
                upstream.base_url()
            ),
        ));
        let (_, key) = home.create_key("attacker");
        let krouter = Krouter::spawn(&home, &[]);
        Self {
            krouter,
            upstream,
            key,
            answered: Vec::new(),
            _home: home,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.krouter.addr
    }

    /// `POST path` with the key, `extra` header lines (each ending in CRLF), and `body`
    /// written after the head exactly as given.
    fn post(&self, path: &str, extra: &str, body: &[u8]) -> Vec<u8> {
        let mut bytes = format!(
            "POST {path} HTTP/1.1\r\nHost: krouter\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\n{extra}\r\n",
            self.key
        )
        .into_bytes();
        bytes.extend_from_slice(body);
        bytes
    }

    /// A chat completion with `extra` header lines and `body`.
    fn chat(&self, extra: &str, body: &[u8]) -> Vec<u8> {
        self.post("/v1/chat/completions", extra, body)
    }

    /// Runs `case` on a fresh connection and checks everything the suite promises.
    fn run(&mut self, case: &Case) {
        let name = case.name;
        let before = self.upstream.requests().len();
        let mut raw = Raw::connect(self.addr());
        match &case.write {
            Write::All(bytes) => {
                raw.send(bytes);
            }
            Write::Trickle {
                first,
                rest,
                piece,
                pause,
            } => {
                if raw.send(first) {
                    raw.trickle(rest, *piece, *pause, WAIT);
                }
            }
            Write::Nothing => {}
        }
        let outcome = raw.response(WAIT);
        if let Outcome::Response(response) = &outcome {
            assert!(
                response.status < 500,
                "{name}: a server error: {response:?}"
            );
            // Every answer, hyper's refusals of heads it cannot parse included (krouter
            // writes its own in their place), is marked nosniff; every error is not to be
            // stored and carries a request id.
            assert_eq!(
                response.header("x-content-type-options"),
                Some("nosniff"),
                "{name}: {response:?}"
            );
            if response.status >= 400 {
                assert_eq!(
                    response.header("cache-control"),
                    Some("no-store"),
                    "{name}: {response:?}"
                );
                let id = response.header("x-request-id");
                assert!(id.is_some(), "{name}: {response:?}");
                self.answered
                    .push((name.to_owned(), id.unwrap_or_default().to_owned()));
            }
            assert_eq!(response.header("server"), None, "{name}");
        }
        match (case.expect, &outcome) {
            (Expect::Status(status, close), Outcome::Response(response)) => {
                assert_eq!(response.status, status, "{name}: {response:?}");
                if close {
                    assert!(
                        raw.closed_within(WAIT),
                        "{name}: the connection stayed open"
                    );
                } else {
                    assert!(
                        !raw.closed_within(Duration::from_millis(300)),
                        "{name}: the connection was closed"
                    );
                }
            }
            (Expect::StatusOrClosed(status), Outcome::Response(response)) => {
                assert_eq!(response.status, status, "{name}: {response:?}");
                assert!(
                    raw.closed_within(WAIT),
                    "{name}: the connection stayed open"
                );
            }
            (Expect::Closed | Expect::StatusOrClosed(_), Outcome::Closed) => {}
            (expect, outcome) => panic!("{name}: expected {expect:?}, got {outcome:?}"),
        }
        let seen = self.upstream.requests();
        assert_eq!(
            seen.len() - before,
            case.forwarded,
            "{name}: the upstream saw {:?}",
            &seen[before..]
        );
        self.healthy(name);
    }

    /// `/healthz` answers 200 (polled: the connection a case left may still count against
    /// the cap for a moment) and the process runs.
    fn healthy(&mut self, after: &str) {
        let deadline = Instant::now() + WAIT;
        while status_of(self.addr(), "/healthz", WAIT) != Some(200) {
            assert!(
                Instant::now() < deadline,
                "{after}: /healthz stopped answering"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(self.krouter.alive(), "{after}: krouter exited");
    }

    /// Sends `bytes`, a request and then a head hyper cannot parse, on one connection: the
    /// request must get 200 and the head krouter's refusal, then the connection closes;
    /// `forwarded` requests reach the upstream. Returns the refusal's request id.
    fn refused_behind(&mut self, name: &str, bytes: &[u8], forwarded: usize) -> String {
        let before = self.upstream.requests().len();
        let mut raw = Raw::connect(self.addr());
        raw.send(bytes);
        let Outcome::Response(first) = raw.response(WAIT) else {
            panic!("{name}: no first answer");
        };
        assert_eq!(first.status, 200, "{name}");
        let Outcome::Response(refused) = raw.response(WAIT) else {
            panic!("{name}: no refusal");
        };
        assert_eq!(refused.status, 400, "{name}: {refused:?}");
        assert_eq!(refused.header("x-content-type-options"), Some("nosniff"));
        assert_eq!(refused.header("cache-control"), Some("no-store"));
        assert_eq!(refused.header("connection"), Some("close"));
        let error: serde_json::Value = serde_json::from_slice(&refused.body).expect("a JSON error");
        assert_eq!(error["error"]["type"], "invalid_request_error", "{name}");
        assert!(
            raw.closed_within(WAIT),
            "{name}: the connection stayed open"
        );
        assert_eq!(self.upstream.requests().len() - before, forwarded, "{name}");
        self.healthy(name);
        let id = refused.header("x-request-id");
        assert!(id.is_some(), "{name}: {refused:?}");
        id.unwrap_or_default().to_owned()
    }

    /// Stops krouter, which must exit cleanly and have logged the request id of every error
    /// answer; returns its log.
    fn stop(self) -> String {
        let (status, log) = self.krouter.stop();
        assert!(status.success(), "{log}");
        assert!(!log.contains("panicked"), "{log}");
        for (name, id) in &self.answered {
            assert!(
                log.contains(id.as_str()),
                "{name}: {id} is not in the log:\n{log}"
            );
        }
        log
    }
}

fn all(bytes: impl Into<Vec<u8>>) -> Write {
    Write::All(bytes.into())
}

/// A chunked body of one chunk holding `data`.
fn chunked(data: &[u8]) -> Vec<u8> {
    let mut body = format!("{:x}\r\n", data.len()).into_bytes();
    body.extend_from_slice(data);
    body.extend_from_slice(b"\r\n0\r\n\r\n");
    body
}

// === the tables ===

#[test]
fn ambiguous_framing_oversized_heads_and_bodies_and_unsafe_methods_are_refused() {
    let mut bench = Bench::start(TIGHT_LIMITS);
    let body = CHAT.as_bytes();
    let length = |n: usize| format!("Content-Length: {n}\r\n");
    let hidden =
        "POST /v1/chat/completions HTTP/1.1\r\nHost: krouter\r\nContent-Length: 2\r\n\r\n{}";
    let big_header = format!("X-Big: {}\r\n", "a".repeat(9000));
    let many_headers: String = (0..40).map(|i| format!("X-H{i}: v\r\n")).collect();
    let json_with_request = format!(
        r#"{{"model":"chat","messages":[{{"role":"user","content":"{}"}}]}}"#,
        hidden.replace("\r\n", "\\r\\n")
    );

    #[rustfmt::skip]
    let cases = vec![
        Case { name: "control: a well-formed request gets through", forwarded: 1,
            write: all(bench.chat(&length(body.len()), body)), expect: Expect::Status(200, false) },
        Case { name: "control: a chunked request gets through", forwarded: 1,
            write: all(bench.chat("Transfer-Encoding: chunked\r\n", &chunked(body))), expect: Expect::Status(200, false) },
        Case { name: "Content-Length with Transfer-Encoding", forwarded: 0,
            write: all(bench.chat(&format!("{}Transfer-Encoding: chunked\r\n", length(4)), &chunked(body))),
            expect: Expect::Status(400, true) },
        Case { name: "Transfer-Encoding then Content-Length", forwarded: 0,
            write: all(bench.chat(&format!("Transfer-Encoding: chunked\r\n{}", length(4)), &chunked(body))),
            expect: Expect::Status(400, true) },
        Case { name: "two differing Content-Lengths", forwarded: 0,
            write: all(bench.chat(&format!("{}{}", length(body.len()), length(5)), body)),
            expect: Expect::Status(400, true) },
        Case { name: "a signed Content-Length", forwarded: 0,
            write: all(bench.chat(&format!("Content-Length: +{}\r\n", body.len()), body)),
            expect: Expect::Status(400, true) },
        Case { name: "chunked, then gzip", forwarded: 0,
            write: all(bench.chat("Transfer-Encoding: chunked, gzip\r\n", &chunked(body))),
            expect: Expect::Status(400, true) },
        Case { name: "gzip, then chunked", forwarded: 0,
            write: all(bench.chat("Transfer-Encoding: gzip, chunked\r\n", &chunked(body))),
            expect: Expect::Status(400, true) },
        Case { name: "identity transfer coding", forwarded: 0,
            write: all(bench.chat(&format!("Transfer-Encoding: identity\r\n{}", length(body.len())), body)),
            expect: Expect::Status(400, true) },
        Case { name: "two Transfer-Encoding lines", forwarded: 0,
            write: all(bench.chat("Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n", &chunked(body))),
            expect: Expect::Status(400, true) },
        Case { name: "Transfer-Encoding in HTTP/1.0", forwarded: 0,
            write: all(format!("POST /v1/chat/completions HTTP/1.0\r\nHost: krouter\r\nAuthorization: Bearer {}\r\nTransfer-Encoding: chunked\r\n\r\n", bench.key).into_bytes()),
            expect: Expect::Status(400, true) },
        Case { name: "obs-fold", forwarded: 0,
            write: all(bench.chat(&format!("X-Folded: a\r\n b\r\n{}", length(body.len())), body)),
            expect: Expect::Status(400, true) },
        Case { name: "whitespace before a colon", forwarded: 0,
            write: all(bench.chat(&format!("Content-Length : {}\r\n", body.len()), body)),
            expect: Expect::Status(400, true) },
        Case { name: "two Host headers", forwarded: 0,
            write: all(bench.chat(&format!("Host: elsewhere\r\n{}", length(body.len())), body)),
            expect: Expect::Status(400, true) },
        Case { name: "no Host header", forwarded: 0,
            write: all(format!("POST /v1/chat/completions HTTP/1.1\r\nAuthorization: Bearer {}\r\n{}\r\n{CHAT}", bench.key, length(body.len())).into_bytes()),
            expect: Expect::Status(400, true) },
        Case { name: "a NUL in a header value", forwarded: 0,
            write: all(bench.chat(&format!("X-Nul: a\0b\r\n{}", length(body.len())), body)),
            expect: Expect::Status(400, true) },
        Case { name: "a chunk size that overflows", forwarded: 0,
            write: all(bench.chat("Transfer-Encoding: chunked\r\n", b"fffffffffffffffff1\r\n{}\r\n0\r\n\r\n")),
            expect: Expect::Status(400, true) },
        Case { name: "a chunk over the endpoint's body limit", forwarded: 0,
            write: all(bench.chat("Transfer-Encoding: chunked\r\n", &chunked(&[b' '; 5000]))),
            expect: Expect::Status(413, true) },
        Case { name: "a declared body over the endpoint's limit", forwarded: 0,
            write: all(bench.chat(&length(5000), &[b' '; 5000])),
            expect: Expect::Status(413, true) },
        Case { name: "a body over the smaller embeddings limit", forwarded: 0,
            write: all(bench.post("/v1/embeddings", &length(2000), &[b' '; 2000])),
            expect: Expect::Status(413, true) },
        Case { name: "header bytes over the limit", forwarded: 0,
            write: all(bench.chat(&format!("{big_header}{}", length(body.len())), body)),
            expect: Expect::Status(431, true) },
        Case { name: "too many headers", forwarded: 0,
            write: all(bench.chat(&format!("{many_headers}{}", length(body.len())), body)),
            expect: Expect::Status(431, true) },
        Case { name: "an over-long request line", forwarded: 0,
            write: all(format!("GET /healthz?{} HTTP/1.1\r\nHost: krouter\r\n\r\n", "q".repeat(10_000)).into_bytes()),
            expect: Expect::Status(431, true) },
        Case { name: "TRACE", forwarded: 0,
            write: all(&b"TRACE / HTTP/1.1\r\nHost: krouter\r\n\r\n"[..]),
            expect: Expect::Status(405, true) },
        Case { name: "CONNECT", forwarded: 0,
            write: all(format!("CONNECT {0} HTTP/1.1\r\nHost: {0}\r\n\r\n", bench.upstream.addr()).into_bytes()),
            expect: Expect::Status(405, true) },
        Case { name: "a method the endpoint does not take", forwarded: 0,
            write: all(format!("GET /v1/chat/completions HTTP/1.1\r\nHost: krouter\r\nAuthorization: Bearer {}\r\n\r\n", bench.key).into_bytes()),
            expect: Expect::Status(405, true) },
        Case { name: "OPTIONS", forwarded: 0,
            write: all(&b"OPTIONS /v1/chat/completions HTTP/1.1\r\nHost: krouter\r\n\r\n"[..]),
            expect: Expect::Status(405, true) },
        Case { name: "smuggling: CL.TE with a request after an empty chunked body", forwarded: 0,
            write: all(bench.chat(&format!("{}Transfer-Encoding: chunked\r\n", length(5 + hidden.len())), format!("0\r\n\r\n{hidden}").as_bytes())),
            expect: Expect::Status(400, true) },
        Case { name: "smuggling: TE.CL with a request inside the chunk", forwarded: 0,
            write: all(bench.chat(&format!("Transfer-Encoding: chunked\r\n{}", length(3)), &chunked(hidden.as_bytes()))),
            expect: Expect::Status(400, true) },
        Case { name: "smuggling: a request inside a JSON string is one request", forwarded: 1,
            write: all(bench.chat(&length(json_with_request.len()), json_with_request.as_bytes())),
            expect: Expect::Status(200, false) },
    ];
    for case in &cases {
        bench.run(case);
    }

    // Allow lists the methods of the path; errors are never cached.
    let mut raw = Raw::connect(bench.addr());
    raw.send(b"PUT /healthz HTTP/1.1\r\nHost: krouter\r\n\r\n");
    let Outcome::Response(response) = raw.response(WAIT) else {
        panic!("no answer to PUT /healthz");
    };
    assert_eq!(response.status, 405);
    assert_eq!(response.header("allow"), Some("GET, HEAD"));
    assert_eq!(response.header("cache-control"), Some("no-store"));
    assert_eq!(response.header("connection"), Some("close"));

    // A chunked request pipelined behind another cannot be checked against its raw head:
    // the first is answered, the second refused, and only the first reaches the upstream.
    let before = bench.upstream.requests().len();
    let mut raw = Raw::connect(bench.addr());
    let mut two = bench.chat(&length(body.len()), body);
    two.extend(bench.chat("Transfer-Encoding: chunked\r\n", &chunked(body)));
    raw.send(&two);
    let statuses: Vec<u16> = [raw.response(WAIT), raw.response(WAIT)]
        .iter()
        .map(|outcome| match outcome {
            Outcome::Response(response) => response.status,
            other => panic!("pipelined: {other:?}"),
        })
        .collect();
    assert_eq!(statuses, [200, 400]);
    assert!(raw.closed_within(WAIT));
    assert_eq!(bench.upstream.requests().len() - before, 1);
    bench.healthy("pipelined chunked request");

    // A head hyper cannot parse, pipelined behind a request: the request is answered, then
    // the head gets krouter's refusal (not hyper's bare answer), and only the request
    // reaches the upstream. (hyper writes its answer after the first response has gone
    // out; a write holding both is covered by the unit tests of the socket.) The same
    // after an HTTP/1.0 keep-alive request, where hyper's answer is HTTP/1.0 and does not
    // say it closes.
    let folded = "GET /healthz HTTP/1.1\r\nHost: krouter\r\nX-Folded: a\r\n b\r\n\r\n";
    let mut behind_chat = bench.chat(&length(body.len()), body);
    behind_chat.extend_from_slice(folded.as_bytes());
    let behind_http10 = "GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /healthz HTTP/1.0\r\nX-Folded: a\r\n b\r\n\r\n";
    let refused_ids: Vec<String> = [
        ("pipelined unparseable head", behind_chat, 1),
        (
            "HTTP/1.0 unparseable head",
            behind_http10.as_bytes().to_vec(),
            0,
        ),
    ]
    .into_iter()
    .map(|(name, bytes, forwarded)| bench.refused_behind(name, &bytes, forwarded))
    .collect();

    // The request hidden in a JSON string reached the upstream as text, once.
    let seen = bench.upstream.requests();
    assert!(
        seen.iter()
            .filter(
                |s| String::from_utf8_lossy(&s.body).contains("POST /v1/chat/completions HTTP/1.1")
            )
            .count()
            == 1
    );
    assert!(
        seen.iter()
            .all(|s| s.method == "POST" && s.path == "/v1/chat/completions")
    );
    let log = bench.stop();
    // A head hyper refused is logged with the request id its answer carried.
    for id in refused_ids {
        assert!(
            log.lines()
                .any(|line| line.contains("request head refused before parsing")
                    && line.contains(&id)),
            "{id}: {log}"
        );
    }
}

#[test]
fn a_request_target_over_hypers_64_kib_cap_gets_krouters_414() {
    // hyper refuses a request target over 65,534 bytes with a bare 414 before krouter sees
    // the request; only a `max_header_bytes` above that lets such a head be read at all.
    let limits = TIGHT_LIMITS.replace("max_header_bytes = 8192", "max_header_bytes = 131072");
    let mut bench = Bench::start(&limits);
    let target = |n: usize| {
        format!(
            "GET /healthz?{} HTTP/1.1\r\nHost: krouter\r\n\r\n",
            "q".repeat(n)
        )
        .into_bytes()
    };
    #[rustfmt::skip]
    let cases = vec![
        Case { name: "control: a 60,000-byte request target", forwarded: 0,
            write: all(target(60_000)), expect: Expect::Status(200, false) },
        Case { name: "a 70,000-byte request target", forwarded: 0,
            write: all(target(70_000)), expect: Expect::Status(414, true) },
    ];
    for case in &cases {
        bench.run(case);
    }
    let id = bench
        .answered
        .last()
        .map(|(_, id)| id.clone())
        .unwrap_or_default();
    let log = bench.stop();
    assert!(
        log.lines()
            .any(|line| line.contains("request head refused before parsing")
                && line.contains(&id)
                && line.contains("414")),
        "{id}: {log}"
    );
}

#[test]
fn slow_and_idle_clients_are_dropped() {
    let mut bench = Bench::start(TIGHT_LIMITS);
    let head = bench.chat(&format!("Content-Length: {}\r\n", 2000), b"");
    let mut stalled = head.clone();
    stalled.extend_from_slice(br#"{"model":"chat","#);

    #[rustfmt::skip]
    let cases = vec![
        Case { name: "a connection that sends nothing", forwarded: 0,
            write: Write::Nothing, expect: Expect::Closed },
        Case { name: "slowloris: a head one byte at a time", forwarded: 0,
            write: Write::Trickle {
                first: Vec::new(),
                rest: format!("GET /healthz HTTP/1.1\r\nHost: krouter\r\nX-Slow: {}\r\n\r\n", "s".repeat(200)).into_bytes(),
                piece: 1, pause: Duration::from_millis(200) },
            expect: Expect::Closed },
        Case { name: "a body under the minimum rate", forwarded: 0,
            write: Write::Trickle { first: head, rest: vec![b' '; 2000], piece: 1, pause: Duration::from_millis(200) },
            expect: Expect::StatusOrClosed(408) },
        Case { name: "a body that stops half-way", forwarded: 0,
            write: all(stalled), expect: Expect::StatusOrClosed(408) },
    ];
    for case in &cases {
        bench.run(case);
    }

    // The first head is due within the header read time (2 s) of the accept, however late
    // its first byte: one at 1.5 s does not start a fresh 2 s.
    let mut raw = Raw::connect(bench.addr());
    std::thread::sleep(Duration::from_millis(1500));
    raw.send(b"GET /healthz HTTP/1.1\r\n");
    std::thread::sleep(Duration::from_millis(1700));
    raw.send(b"Host: krouter\r\n\r\n");
    let outcome = raw.response(WAIT);
    assert!(
        matches!(outcome, Outcome::Closed),
        "a head completed 3.2 s after the accept: {outcome:?}"
    );

    // A kept-alive connection with no next request is closed after the idle time.
    let mut raw = Raw::connect(bench.addr());
    raw.send(b"GET /healthz HTTP/1.1\r\nHost: krouter\r\n\r\n");
    assert!(matches!(raw.response(WAIT), Outcome::Response(r) if r.status == 200));
    assert!(
        raw.closed_within(WAIT),
        "an idle kept-alive connection stayed open"
    );

    // So is an HTTP/2 connection, with a GOAWAY first.
    let mut raw = Raw::connect(bench.addr());
    raw.send(&h2::hello_get("/healthz"));
    assert_eq!(
        h2::reply(&mut raw, 1, WAIT),
        Some(h2::Answer::Headers(Some(200)))
    );
    let end = h2::end(&mut raw, WAIT);
    assert!(
        matches!(end, h2::End::GoAway(0) | h2::End::Closed),
        "an idle HTTP/2 connection: {end:?}"
    );

    // A client that stops reading its responses is dropped once its buffers are full.
    let mut raw = Raw::connect(bench.addr());
    let request = b"GET /healthz HTTP/1.1\r\nHost: krouter\r\n\r\n".repeat(200);
    let started = Instant::now();
    let mut dropped = false;
    while started.elapsed() < Duration::from_secs(60) {
        if !raw.send(&request) {
            dropped = true;
            break;
        }
    }
    assert!(
        dropped && raw.closed_within(WAIT),
        "a client that never reads was never dropped"
    );
    bench.healthy("a client that never reads");
    let _ = bench.stop();
}

#[test]
fn connections_beyond_the_cap_are_refused_and_logged_sparingly() {
    let mut bench = Bench::start("[limits]\nmax_connections = 4\n");
    // Four connections, each mid-way through a head, hold every slot.
    let holders: Vec<Raw> = (0..4)
        .map(|_| {
            let mut raw = Raw::connect(bench.addr());
            raw.send(b"GET /healthz HTTP/1.1\r\n");
            raw
        })
        .collect();
    // The slots are taken when krouter accepts: give it a moment to accept all four.
    std::thread::sleep(Duration::from_millis(500));
    for attempt in 0..10 {
        let mut raw = Raw::connect(bench.addr());
        raw.send(b"GET /healthz HTTP/1.1\r\nHost: krouter\r\n\r\n");
        match raw.response(WAIT) {
            Outcome::Response(response) => {
                assert_eq!(response.status, 503, "attempt {attempt}: {response:?}");
                assert_eq!(response.header("connection"), Some("close"));
                assert!(raw.closed_within(WAIT));
            }
            Outcome::Closed => {}
            Outcome::Silent => panic!("attempt {attempt}: neither refused nor closed"),
        }
    }
    assert_eq!(
        value(
            &scrape(&bench.krouter),
            "krouter_connections_refused_total{reason=\"max_connections\"}"
        ),
        10.0
    );
    drop(holders);
    bench.healthy("the cap");
    // One line at once, then at most one per 10 s: the ten refusals above make one or two.
    bench.krouter.wait_for_log("connection limit reached", WAIT);
    let log = bench.krouter.log();
    let lines = log.matches("connection limit reached").count();
    assert!(
        (1..=2).contains(&lines),
        "{lines} log lines for 10 refusals:\n{log}"
    );
    assert!(bench.upstream.requests().is_empty());
    let _ = bench.stop();
}

#[test]
fn http2_floods_end_in_goaway_enhance_your_calm() {
    let mut bench = Bench::start(TIGHT_LIMITS);

    // Rapid reset: streams opened and cancelled at once, thousands of them.
    let mut flood = h2::hello();
    for i in 0..5_000u32 {
        let stream = 2 * i + 1;
        flood.extend(h2::frame(
            h2::HEADERS,
            h2::END_HEADERS | h2::END_STREAM,
            stream,
            &h2::get("/healthz"),
        ));
        flood.extend(h2::rst_stream(stream, h2::CANCEL));
    }
    let mut raw = Raw::connect(bench.addr());
    raw.send(&flood);
    // An idle close would be GOAWAY NO_ERROR: the code says the flood itself was caught.
    let end = h2::end(&mut raw, WAIT);
    assert_eq!(end, h2::End::GoAway(h2::ENHANCE_YOUR_CALM), "rapid reset");
    bench.healthy("rapid reset");

    // CONTINUATION flood: one header block that never ends.
    let mut flood = h2::hello();
    flood.extend(h2::frame(
        h2::HEADERS,
        h2::END_STREAM,
        1,
        &h2::get("/healthz"),
    ));
    let filler = h2::block(&[("x-flood", &"f".repeat(1000))]);
    for _ in 0..5_000 {
        flood.extend(h2::frame(h2::CONTINUATION, 0, 1, &filler));
    }
    let mut raw = Raw::connect(bench.addr());
    raw.send(&flood);
    let end = h2::end(&mut raw, WAIT);
    assert_eq!(
        end,
        h2::End::GoAway(h2::ENHANCE_YOUR_CALM),
        "CONTINUATION flood"
    );
    bench.healthy("CONTINUATION flood");

    // A request whose header list is over the limit never reaches the upstream (h2 answers
    // it with a 431); the same request within the limit does, so the frames
    // themselves are right.
    let key = format!("Bearer {}", bench.key);
    let padding = "b".repeat(12_000);
    for (padding, forwarded) in [("small", 1), (padding.as_str(), 0)] {
        let before = bench.upstream.requests().len();
        let fields = [
            ("authorization", key.as_str()),
            ("content-type", "application/json"),
            ("x-padding", padding),
        ];
        let mut request = h2::hello();
        request.extend(h2::frame(
            h2::HEADERS,
            h2::END_HEADERS,
            1,
            &h2::request("POST", "/v1/chat/completions", &fields),
        ));
        request.extend(h2::frame(h2::DATA, h2::END_STREAM, 1, CHAT.as_bytes()));
        let mut raw = Raw::connect(bench.addr());
        raw.send(&request);
        let status = if forwarded == 1 { 200 } else { 431 };
        assert_eq!(
            h2::reply(&mut raw, 1, WAIT),
            Some(h2::Answer::Headers(Some(status))),
            "{} bytes of headers",
            padding.len()
        );
        assert_eq!(
            bench.upstream.requests().len() - before,
            forwarded,
            "{} bytes of headers",
            padding.len()
        );
        bench.healthy("an oversized header list");
    }

    assert_eq!(bench.upstream.requests().len(), 1);
    let _ = bench.stop();
}

/// Header fields of an HTTP/2 request.
type Fields<'a> = Vec<(&'a str, &'a str)>;

/// An HTTP/2 chat completion on `stream`: HEADERS with the key and `fields`, then `body` as
/// one DATA frame ending the stream (or no DATA and the stream left open, when `None`).
fn h2_chat(bench: &Bench, stream: u32, fields: &[(&str, &str)], body: Option<&[u8]>) -> Vec<u8> {
    let key = format!("Bearer {}", bench.key);
    let mut all = vec![
        ("authorization", key.as_str()),
        ("content-type", "application/json"),
    ];
    all.extend_from_slice(fields);
    let mut frames = h2::frame(
        h2::HEADERS,
        h2::END_HEADERS,
        stream,
        &h2::request("POST", "/v1/chat/completions", &all),
    );
    if let Some(body) = body {
        frames.extend(h2::frame(h2::DATA, h2::END_STREAM, stream, body));
    }
    frames
}

#[test]
fn http2_framing_that_http1_would_smuggle_is_refused_per_stream() {
    let mut bench = Bench::start(TIGHT_LIMITS);
    let body = CHAT.as_bytes();
    let length = body.len().to_string();
    let short = (body.len() - 10).to_string();
    let long = (body.len() + 10).to_string();
    let signed = format!("+{length}");
    let ok = h2::Answer::Headers(Some(200));
    // Malformed (RFC 9113 section 8.1.1): the stream is reset. A field h2 cannot even
    // hold as a header ends the whole connection, which is stricter still.
    let reset = h2::Answer::Reset(h2::PROTOCOL_ERROR);
    let goaway = h2::Answer::GoAway(h2::PROTOCOL_ERROR);

    // (name, header fields, answer); each on a fresh connection.
    #[rustfmt::skip]
    let cases: Vec<(&str, Fields, h2::Answer)> = vec![
        ("control: no content-length", vec![], ok),
        ("control: a content-length that matches", vec![("content-length", &length)], ok),
        ("transfer-encoding in HTTP/2", vec![("transfer-encoding", "chunked")], reset),
        ("connection in HTTP/2", vec![("connection", "keep-alive")], reset),
        ("keep-alive in HTTP/2", vec![("keep-alive", "timeout=5")], reset),
        ("te other than trailers", vec![("te", "gzip")], reset),
        ("a content-length under the DATA", vec![("content-length", &short)], reset),
        ("a content-length over the DATA", vec![("content-length", &long)], reset),
        ("two differing content-lengths", vec![("content-length", &length), ("content-length", &short)], reset),
        ("a signed content-length", vec![("content-length", &signed)], reset),
        ("CR LF in a value", vec![("x-inject", "a\r\ntransfer-encoding: chunked")], goaway),
        ("an upper-case field name", vec![("X-Upper", "v")], goaway),
    ];
    for (name, fields, expected) in &cases {
        let before = bench.upstream.requests().len();
        let mut raw = Raw::connect(bench.addr());
        let mut request = h2::hello();
        request.extend(h2_chat(&bench, 1, fields, Some(body)));
        raw.send(&request);
        assert_eq!(h2::reply(&mut raw, 1, WAIT), Some(*expected), "{name}");
        assert_eq!(
            bench.upstream.requests().len() - before,
            usize::from(*expected == ok),
            "{name}: the upstream saw {:?}",
            &bench.upstream.requests()[before..]
        );
        bench.healthy(name);
    }

    // DATA on a stream whose request is over (a body longer than its END_STREAM says): a
    // connection error. The request before it may have been forwarded already, once; the
    // extra bytes never are.
    let before = bench.upstream.requests().len();
    let mut raw = Raw::connect(bench.addr());
    let mut request = h2::hello();
    request.extend(h2_chat(&bench, 1, &[], Some(body)));
    request.extend(h2::frame(h2::DATA, h2::END_STREAM, 1, body));
    raw.send(&request);
    assert_eq!(
        h2::reply(&mut raw, 1, WAIT),
        Some(goaway),
        "DATA after END_STREAM"
    );
    assert!(raw.closed_within(WAIT), "DATA after END_STREAM");
    let seen = &bench.upstream.requests()[before..];
    assert!(
        seen.len() <= 1
            && seen
                .iter()
                .all(|s| serde_json::from_slice::<serde_json::Value>(&s.body).is_ok()),
        "DATA after END_STREAM: {seen:?}"
    );
    bench.healthy("DATA after END_STREAM");
    let _ = bench.stop();
}

#[test]
fn http2_streams_beyond_the_concurrency_cap_are_refused() {
    // Default body timing, so the open streams wait for their DATA without a rush.
    let mut bench = Bench::start("[limits]\nh2_max_concurrent_streams = 2\n");
    let body = CHAT.as_bytes();
    let mut raw = Raw::connect(bench.addr());
    let mut request = h2::hello();
    for stream in [1, 3, 5] {
        request.extend(h2_chat(&bench, stream, &[], None));
    }
    raw.send(&request);

    // The server says its cap up front, then refuses the third stream while two are open.
    let deadline = Instant::now() + WAIT;
    let settings = loop {
        let frame = h2::read(&mut raw, deadline).expect("the server's SETTINGS");
        if frame.kind == h2::SETTINGS && frame.flags & 0x1 == 0 {
            break h2::settings(&frame.payload);
        }
    };
    assert!(
        settings.contains(&(h2::MAX_CONCURRENT_STREAMS, 2)),
        "{settings:?}"
    );
    assert_eq!(
        h2::reply(&mut raw, 5, WAIT),
        Some(h2::Answer::Reset(h2::REFUSED_STREAM))
    );

    // The two open streams finish and are answered; then a new stream is taken.
    let mut rest = h2::frame(h2::DATA, h2::END_STREAM, 1, body);
    rest.extend(h2::frame(h2::DATA, h2::END_STREAM, 3, body));
    raw.send(&rest);
    let ok = Some(h2::Answer::Headers(Some(200)));
    assert_eq!(h2::replies(&mut raw, &[1, 3], WAIT), [ok, ok]);
    raw.send(&h2_chat(&bench, 7, &[], Some(body)));
    assert_eq!(h2::reply(&mut raw, 7, WAIT), ok);
    assert_eq!(bench.upstream.requests().len(), 3);
    bench.healthy("the stream cap");
    let _ = bench.stop();
}

#[test]
fn a_body_past_the_read_timeout_or_under_the_minimum_rate_gets_408() {
    let mut bench = Bench::start(
        "[limits]\nbody_read_timeout_ms = 3000\nbody_min_bytes_per_sec = 100\nbody_min_rate_grace_ms = 0\n",
    );
    let head = |length: usize| bench.chat(&format!("Content-Length: {length}\r\n"), b"");
    let answer = |raw: &mut Raw, case: &str| -> String {
        let Outcome::Response(response) = raw.response(WAIT) else {
            panic!("{case}: no answer");
        };
        assert_eq!(response.status, 408, "{case}: {response:?}");
        assert!(response.header("x-request-id").is_some(), "{case}");
        assert!(
            raw.closed_within(WAIT),
            "{case}: the connection stayed open"
        );
        String::from_utf8_lossy(&response.body).into_owned()
    };

    // Fast enough all along (about 500 bytes/s against a minimum of 100), but 2,000 bytes
    // take four seconds: the read timeout (3 s) ends it.
    let mut raw = Raw::connect(bench.addr());
    raw.send(&head(2000));
    raw.trickle(&[b' '; 2000], 100, Duration::from_millis(200), WAIT);
    let message = answer(&mut raw, "a steady body past the read timeout");
    assert!(message.contains("did not arrive in time"), "{message}");

    // Ten bytes, then nothing: under the minimum rate a tenth of a second in.
    let mut raw = Raw::connect(bench.addr());
    let mut stalled = head(2000);
    stalled.extend_from_slice(&[b' '; 10]);
    raw.send(&stalled);
    let message = answer(&mut raw, "a stalled body");
    assert!(message.contains("arrived too slowly"), "{message}");

    assert!(bench.upstream.requests().is_empty());
    bench.healthy("slow bodies");
    let _ = bench.stop();
}
