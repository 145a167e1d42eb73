//! Resilience and budgets through the real `krouter`: retries before any response, circuit
//! breakers that open, probe, close and survive a restart, 429 rests, 503 when every target
//! is unavailable, streams held until their first content, the dialect's error event when a
//! stream fails after content, a client's disconnect reaching the upstream, and token
//! budgets per group. Upstream faults come from the scripted mock's fault models.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use krouter_tests::client::Reply;
use krouter_tests::home::TempHome;
use krouter_tests::krouter::{Krouter, policy};
use krouter_tests::upstream::MockUpstream;

use super::proxy_serve::{
    assert_nothing_leaked, chat, chat_stream, complete, error_message, message, post_anthropic,
    provider, request_id, request_line, route,
};

/// A `[resilience]` that acts fast: one retry after 10–20 ms, a breaker that opens after two
/// failures for one second, a one-second 429 rest, and 400 ms for a stream's first content.
const FAST: &str = "[resilience]\nretries = 1\nbackoff_initial_ms = 20\nbackoff_max_ms = 50\n\
    rate_limit_cooldown_secs = 1\nstream_first_content_timeout_ms = 400\n\n\
    [resilience.breaker]\nfailure_threshold = 2\nopen_secs = 1\nhalf_open_probes = 1\n\n";

/// The `"attempts"` of request `reply`'s log line.
fn attempts(krouter: &Krouter, reply: &Reply) -> u64 {
    let line = request_line(krouter, &request_id(reply));
    let at = line
        .find("\"attempts\":")
        .unwrap_or_else(|| panic!("{line}"))
        + 11;
    line[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap_or_else(|_| panic!("{line}"))
}

/// Requests `upstream` saw for upstream model `model`.
fn seen(upstream: &MockUpstream, model: &str) -> usize {
    upstream
        .requests()
        .iter()
        .filter(|s| {
            serde_json::from_slice::<serde_json::Value>(&s.body)
                .is_ok_and(|body| body["model"] == model)
        })
        .count()
}

/// One mock, provider `a` on it, route `chat` to `a:TARGET_MODEL`, and a key: the
/// client-disconnect cases, which talk raw HTTP/1.1 to krouter.
fn one_upstream(target_model: &str) -> (TempHome, MockUpstream, String) {
    let home = TempHome::init();
    let a = MockUpstream::start();
    home.write_policy(&policy(
        2,
        &[
            provider("a", "openai-compatible", &a.base_url(), None, ""),
            route("chat", &[&format!("a:{target_model}")]),
        ]
        .concat(),
    ));
    let (_, key) = home.create_key("app");
    (home, a, key)
}

/// An HTTP/1.1 request to `path` with bearer `key` and `body`, as raw bytes.
fn raw_post(path: &str, key: &str, body: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nhost: k\r\nauthorization: Bearer {key}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// Two mocks, providers `a` and `b` on them, the routes given, [`FAST`] resilience.
fn two_upstreams(routes: &[(&str, &[&str])]) -> (TempHome, MockUpstream, MockUpstream, String) {
    let home = TempHome::init();
    let a = MockUpstream::start();
    let b = MockUpstream::start();
    let mut text = [
        provider("a", "openai-compatible", &a.base_url(), None, ""),
        provider("b", "openai-compatible", &b.base_url(), None, ""),
    ]
    .concat();
    for (model, targets) in routes {
        text.push_str(&route(model, targets));
    }
    text.push_str(FAST);
    home.write_policy(&policy(2, &text));
    let (_, key) = home.create_key("app");
    (home, a, b, key)
}

#[test]
fn a_reset_before_the_answer_is_retried_on_the_same_target() {
    let (home, a, b, key) = two_upstreams(&[
        ("flaky", &["a:flaky-1", "b:ok"]),
        ("twice", &["a:flaky-2", "b:ok"]),
    ]);
    let krouter = Krouter::spawn(&home, &[]);
    // The first attempt is reset before a head; the retry on `a` answers.
    let reply = complete(&krouter, &key, &chat("flaky"));
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(reply.body.contains("(model flaky-1)"), "{}", reply.body);
    assert_eq!((seen(&a, "flaky-1"), seen(&b, "ok")), (2, 0));
    assert_eq!(attempts(&krouter, &reply), 2);
    // Reset twice: one retry only ([resilience] retries = 1), then the next target.
    let reply = complete(&krouter, &key, &chat("twice"));
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(reply.body.contains("(model ok)"), "{}", reply.body);
    assert_eq!((seen(&a, "flaky-2"), seen(&b, "ok")), (2, 1));
    assert_eq!(attempts(&krouter, &reply), 3);
    let (status, log) = krouter.stop();
    assert!(status.success(), "{log}");
}

#[test]
fn a_breaker_opens_skips_its_target_probes_and_closes() {
    let (home, a, b, key) = two_upstreams(&[
        ("down", &["a:fail-503", "b:ok"]),
        ("recover", &["a:flaky500-3", "b:ok"]),
        ("alone", &["a:fail-502"]),
        ("client-errors", &["a:fail-400"]),
    ]);
    let krouter = Krouter::spawn(&home, &[]);

    // Two 503s open the breaker; the third request goes straight to `b`.
    for expected_a in [1, 2, 2] {
        let reply = complete(&krouter, &key, &chat("down"));
        assert_eq!(reply.status, 200, "{reply:?}");
        assert_eq!(seen(&a, "fail-503"), expected_a);
    }
    krouter.wait_for_log("circuit breaker opened", Duration::from_secs(2));
    // After `open_secs`, one probe; it fails, so the breaker opens again.
    std::thread::sleep(Duration::from_millis(1100));
    let reply = complete(&krouter, &key, &chat("down"));
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(seen(&a, "fail-503"), 3);
    krouter.wait_for_log("circuit breaker probe failed", Duration::from_secs(2));

    // A target that recovers: 503, 503 (open), probe 503 (open again), probe answers.
    for _ in 0..2 {
        assert_eq!(complete(&krouter, &key, &chat("recover")).status, 200);
    }
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(complete(&krouter, &key, &chat("recover")).status, 200);
    assert_eq!(seen(&a, "flaky500-3"), 3);
    std::thread::sleep(Duration::from_millis(1100));
    let reply = complete(&krouter, &key, &chat("recover"));
    assert!(reply.body.contains("(model flaky500-3)"), "{}", reply.body);
    krouter.wait_for_log("circuit breaker closed", Duration::from_secs(2));
    // Closed: the next request goes to `a` again.
    let reply = complete(&krouter, &key, &chat("recover"));
    assert!(reply.body.contains("(model flaky500-3)"), "{}", reply.body);
    assert_eq!(seen(&a, "flaky500-3"), 5);

    // Every target open: 503 with Retry-After, in the dialect's shape, and no request.
    for status in [502, 502] {
        assert_eq!(complete(&krouter, &key, &chat("alone")).status, status);
    }
    let reply = complete(&krouter, &key, &chat("alone"));
    assert_eq!(reply.status, 503, "{reply:?}");
    assert_eq!(reply.header("retry-after"), Some("1"), "{reply:?}");
    let text = error_message(&reply, false, "alone");
    assert!(text.contains("temporarily unavailable"), "{text}");
    assert_eq!(seen(&a, "fail-502"), 2);

    // 4xx answers never open a breaker.
    for _ in 0..4 {
        assert_eq!(complete(&krouter, &key, &chat("client-errors")).status, 400);
    }
    assert_eq!(seen(&a, "fail-400"), 4);
    assert_eq!(seen(&b, "ok"), 7);
    let (status, log) = krouter.stop();
    assert!(status.success(), "{log}");
    assert_eq!(log.matches("circuit breaker opened").count(), 3, "{log}");
}

#[test]
fn a_provider_s_own_resilience_table_overrides_the_policy_for_its_targets_only() {
    let home = TempHome::init();
    let a = MockUpstream::start();
    let b = MockUpstream::start();
    let c = MockUpstream::start();
    // `a`: no retries and a breaker that opens at the first failure, for a minute; `b`
    // keeps the policy's (one retry, two failures, one second).
    let own = "[providers.resilience]\nretries = 0\n\
        [providers.resilience.breaker]\nfailure_threshold = 1\nopen_secs = 60\n";
    let text = [
        provider("a", "openai-compatible", &a.base_url(), None, own),
        provider("b", "openai-compatible", &b.base_url(), None, ""),
        provider("c", "openai-compatible", &c.base_url(), None, ""),
        route("via-a", &["a:flaky-5", "c:ok"]),
        route("via-b", &["b:flaky-5", "c:ok"]),
        FAST.to_owned(),
    ]
    .concat();
    home.write_policy(&policy(2, &text));
    let (_, key) = home.create_key("app");
    let krouter = Krouter::spawn(&home, &[]);

    // `a`: one attempt (no retry), its breaker opens, and the next request skips it.
    let reply = complete(&krouter, &key, &chat("via-a"));
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(attempts(&krouter, &reply), 2, "one attempt on a, then c");
    let reply = complete(&krouter, &key, &chat("via-a"));
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(
        attempts(&krouter, &reply),
        1,
        "a is skipped: its breaker is open"
    );
    assert_eq!(seen(&a, "flaky-5"), 1);

    // `b`: the policy's one retry, which its breaker (two failures) still lets through; the
    // second failure opens it.
    let reply = complete(&krouter, &key, &chat("via-b"));
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(attempts(&krouter, &reply), 3, "two attempts on b, then c");
    assert_eq!(seen(&b, "flaky-5"), 2);
    let reply = complete(&krouter, &key, &chat("via-b"));
    assert_eq!(attempts(&krouter, &reply), 1, "b is skipped now");
    assert_eq!((seen(&b, "flaky-5"), seen(&c, "ok")), (2, 4));
    let (status, log) = krouter.stop();
    assert!(status.success(), "{log}");
}

#[test]
fn a_429_rests_its_target_without_opening_the_breaker() {
    let (home, a, b, key) = two_upstreams(&[
        ("limited", &["a:fail-429-2", "b:ok"]),
        ("limited-alone", &["a:fail-429-none"]),
    ]);
    let krouter = Krouter::spawn(&home, &[]);
    // The 429 sends the request on to `b` and rests `a` for its Retry-After (2 s).
    for _ in 0..3 {
        let reply = complete(&krouter, &key, &chat("limited"));
        assert_eq!(reply.status, 200, "{reply:?}");
    }
    assert_eq!((seen(&a, "fail-429-2"), seen(&b, "ok")), (1, 3));
    std::thread::sleep(Duration::from_millis(2100));
    assert_eq!(complete(&krouter, &key, &chat("limited")).status, 200);
    assert_eq!(seen(&a, "fail-429-2"), 2);

    // Alone: the client gets the 429; then, while the target rests for the policy's
    // cool-down (1 s, no Retry-After upstream), 503 with Retry-After.
    let reply = complete(&krouter, &key, &chat("limited-alone"));
    assert_eq!(reply.status, 429, "{reply:?}");
    let reply = complete(&krouter, &key, &chat("limited-alone"));
    assert_eq!(reply.status, 503, "{reply:?}");
    assert_eq!(reply.header("retry-after"), Some("1"), "{reply:?}");
    assert_eq!(seen(&a, "fail-429-none"), 1);
    let (status, log) = krouter.stop();
    assert!(status.success(), "{log}");
    assert!(!log.contains("circuit breaker opened"), "{log}");
    assert!(log.contains("upstream rate limited; target rests"), "{log}");
}

#[test]
fn an_open_breaker_stays_open_across_a_restart() {
    let home = TempHome::init();
    let a = MockUpstream::start();
    let text = [
        provider("a", "openai-compatible", &a.base_url(), None, ""),
        route("chat", &["a:fail-500"]),
        "[resilience.breaker]\nfailure_threshold = 1\nopen_secs = 60\n\n".to_owned(),
    ]
    .concat();
    home.write_policy(&policy(2, &text));
    let (_, key) = home.create_key("app");
    let krouter = Krouter::spawn(&home, &[]);
    assert_eq!(complete(&krouter, &key, &chat("chat")).status, 502);
    assert_eq!(complete(&krouter, &key, &chat("chat")).status, 503);
    let (status, log) = krouter.stop();
    assert!(status.success(), "{log}");

    let krouter = Krouter::spawn(&home, &[]);
    let reply = complete(&krouter, &key, &chat("chat"));
    assert_eq!(reply.status, 503, "{reply:?}");
    let wait: u64 = reply.header("retry-after").unwrap().parse().unwrap();
    assert!((50..=60).contains(&wait), "{reply:?}");
    assert_eq!(seen(&a, "fail-500"), 1);
    let (status, log) = krouter.stop();
    assert!(status.success(), "{log}");
}

#[test]
fn streams_without_content_fall_back_and_a_failure_after_content_ends_with_an_error_event() {
    let home = TempHome::init();
    let a = MockUpstream::start();
    let b = MockUpstream::start();
    let mut text = [
        provider("a", "openai-compatible", &a.base_url(), None, ""),
        provider("b", "openai-compatible", &b.base_url(), None, ""),
        provider(
            "quiet",
            "openai-compatible",
            &a.base_url(),
            None,
            "idle_timeout_ms = 300\n",
        ),
        provider(
            "claude",
            "anthropic",
            &a.base_url(),
            Some("anthropic-key"),
            "",
        ),
        provider(
            "claude-b",
            "anthropic",
            &b.base_url(),
            Some("anthropic-key"),
            "",
        ),
        provider(
            "claude-quiet",
            "anthropic",
            &a.base_url(),
            Some("anthropic-key"),
            "idle_timeout_ms = 300\n",
        ),
    ]
    .concat();
    let fallbacks = ["empty-stream", "no-content-stream", "error-event", "stall"];
    for fault in fallbacks {
        text.push_str(&route(fault, &[&format!("a:{fault}"), "b:ok"]));
        text.push_str(&route(
            &format!("claude-{fault}"),
            &[&format!("claude:{fault}"), "claude-b:ok"],
        ));
    }
    text.push_str(&route("after", &["quiet:stall-after-content", "b:ok"]));
    text.push_str(&route("upstream-error", &["a:error-after-content", "b:ok"]));
    text.push_str(&route(
        "claude-after",
        &["claude-quiet:stall-after-content"],
    ));
    text.push_str(FAST);
    home.write_policy(&policy(2, &text));
    home.set_credential("anthropic-key", "anthropic", "test-anthropic-credential-0");
    let (_, key) = home.create_key("app");
    let krouter = Krouter::spawn(&home, &[]);
    let mut replies = Vec::new();

    // No content before the end, an error first, or no content in time: the next target.
    for fault in fallbacks {
        let started = Instant::now();
        let reply = complete(&krouter, &key, &chat_stream(fault));
        assert_eq!(reply.status, 200, "{fault}: {reply:?}");
        assert!(reply.body.contains("(model ok)"), "{fault}: {}", reply.body);
        assert!(
            reply.body.ends_with("data: [DONE]\n\n"),
            "{fault}: {}",
            reply.body
        );
        assert!(
            !reply.body.contains("overloaded"),
            "{fault}: {}",
            reply.body
        );
        assert_eq!(attempts(&krouter, &reply), 2, "{fault}");
        assert!(started.elapsed() < Duration::from_secs(2), "{fault}");
        replies.push(reply);
        let url = krouter.url("/v1/messages");
        let reply = post_anthropic(&url, &key, &message(&format!("claude-{fault}"), true));
        assert_eq!(reply.status, 200, "claude-{fault}: {reply:?}");
        assert!(
            reply.body.contains("(model ok)"),
            "claude-{fault}: {}",
            reply.body
        );
        assert!(reply.body.contains("event: message_stop"), "{}", reply.body);
        replies.push(reply);
    }

    // Content reached the client, then the stream went quiet: the dialect's error event.
    let reply = complete(&krouter, &key, &chat_stream("after"));
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(!reply.body.contains("(model ok)"), "{}", reply.body);
    let last = reply
        .body
        .trim_end()
        .rsplit("\n\n")
        .next()
        .unwrap_or_default();
    assert!(last.starts_with("data: {\"error\":"), "{}", reply.body);
    assert!(last.contains("failed part-way"), "{last}");
    let line = request_line(&krouter, &request_id(&reply));
    assert!(
        line.contains("\"cut_short\":\"the upstream stream went idle\""),
        "{line}"
    );
    replies.push(reply);
    let url = krouter.url("/v1/messages");
    let reply = post_anthropic(&url, &key, &message("claude-after", true));
    assert_eq!(reply.status, 200, "{reply:?}");
    let last = reply
        .body
        .trim_end()
        .rsplit("\n\n")
        .next()
        .unwrap_or_default();
    assert!(last.starts_with("event: error\ndata: {"), "{}", reply.body);
    assert!(last.contains("\"type\":\"api_error\""), "{last}");
    replies.push(reply);

    // An error event after content is the upstream's own answer: relayed as it is.
    let reply = complete(&krouter, &key, &chat_stream("upstream-error"));
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(reply.body.contains("upstream overloaded"), "{}", reply.body);
    assert_eq!(attempts(&krouter, &reply), 1);
    replies.push(reply);

    // Nothing is left hanging upstream: the two streams given up before content and the
    // two ended after it were closed by krouter (the mock saw their clients go).
    assert!(
        a.wait_cancelled(4, Duration::from_secs(2)),
        "upstream streams left open: {} cancelled",
        a.cancelled()
    );
    let stopping = Instant::now();
    let (status, log) = krouter.stop();
    assert!(status.success(), "{log}");
    assert!(stopping.elapsed() < Duration::from_secs(5), "{log}");
    assert_nothing_leaked(
        &home,
        &log,
        &replies,
        &["test-anthropic-credential-0", &key],
    );
}

#[test]
fn a_client_that_goes_away_cancels_its_upstream_request() {
    let (home, a, key) = one_upstream("stall-after-content");
    let krouter = Krouter::spawn(&home, &[]);
    let mut socket = TcpStream::connect(krouter.addr).unwrap();
    let request = raw_post("/v1/chat/completions", &key, &chat_stream("chat"));
    socket.write_all(request.as_bytes()).unwrap();
    // Read until the first content event has come through, then hang up.
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("Hello") {
        let n = socket.read(&mut buf).unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(a.cancelled(), 0);
    drop(socket);
    assert!(
        a.wait_cancelled(1, Duration::from_secs(2)),
        "the upstream stream was not cancelled"
    );
    let (status, log) = krouter.stop();
    assert!(status.success(), "{log}");
    assert!(log.contains("the client closed the connection"), "{log}");
}

#[test]
fn a_client_that_goes_away_before_the_answer_cancels_its_upstream_request() {
    // hyper is told not to look for the hang-up while a request is served (it would take a
    // fresh read buffer per request); krouter's listener looks instead.
    let (home, a, key) = one_upstream("hang");
    let krouter = Krouter::spawn(&home, &[]);
    let body = chat("chat");
    let request = raw_post("/v1/chat/completions", &key, &body);
    for (case, in_two_parts) in [("whole body", false), ("body in two parts", true)] {
        let before = a.cancelled();
        let asked = a.requests().len();
        let mut socket = TcpStream::connect(krouter.addr).unwrap();
        if !in_two_parts {
            socket.write_all(request.as_bytes()).unwrap();
        } else {
            // The head and half the body, then the rest: hyper reads twice.
            let split = request.len() - body.len() / 2;
            socket.write_all(&request.as_bytes()[..split]).unwrap();
            std::thread::sleep(Duration::from_millis(100));
            socket.write_all(&request.as_bytes()[split..]).unwrap();
        }
        let waited = Instant::now();
        while a.requests().len() == asked {
            assert!(
                waited.elapsed() < Duration::from_secs(5),
                "{case}: never forwarded"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(a.cancelled(), before, "{case}");
        drop(socket);
        assert!(
            a.wait_cancelled(before + 1, Duration::from_secs(2)),
            "{case}: the upstream request was not cancelled"
        );
    }
    let (status, log) = krouter.stop();
    assert!(status.success(), "{log}");
    // Each is still logged and recorded, as 499 (closed before the answer), once.
    let lines: Vec<&str> = log
        .lines()
        .filter(|line| line.contains(r#""message":"request""#))
        .collect();
    assert_eq!(lines.len(), 2, "{log}");
    for line in &lines {
        assert!(line.contains(r#""status":499"#), "{line}");
        assert!(line.contains(r#""model":"chat""#), "{line}");
        assert!(
            line.contains(r#""cut_short":"the connection closed before the answer""#),
            "{line}"
        );
    }
    let state = rusqlite::Connection::open_with_flags(
        home.root.join("state/state.sqlite"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let rows: i64 = state
        .query_row(
            "SELECT count(*) FROM requests WHERE status = 499 AND model = 'chat'",
            [],
            |row| row.get(0),
        )
        .unwrap();
    assert_eq!(rows, 2);
}

#[test]
fn pipelined_requests_are_answered_in_turn_without_busy_waiting() {
    // The second request waits in the socket while the first is served: the hang-up watch
    // sees bytes, not an end, and must neither close the connection nor spin on them.
    let (home, a, key) = one_upstream("slow-400");
    let krouter = Krouter::spawn(&home, &[]);
    let mut socket = TcpStream::connect(krouter.addr).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let request = raw_post("/v1/chat/completions", &key, &chat("chat"));
    let cpu = krouter.cpu_time();
    // Two at once (the second waits in hyper's buffer), then a third while they are served
    // (it waits in the socket, where the watch peeks at it).
    socket
        .write_all(format!("{request}{request}").as_bytes())
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    socket.write_all(request.as_bytes()).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while String::from_utf8_lossy(&got)
        .matches("HTTP/1.1 200 OK")
        .count()
        < 3
        || !got.ends_with(b"}")
    {
        let n = socket
            .read(&mut buf)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&got)));
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    // About 1.2 s of waiting on the upstream; a watch that spun would burn most of it.
    let used = krouter.cpu_time() - cpu;
    assert!(
        used < Duration::from_millis(300),
        "krouter used {used:?} of CPU"
    );
    assert_eq!(a.cancelled(), 0);
    let (status, log) = krouter.stop();
    assert!(status.success(), "{log}");
}

#[test]
fn a_group_over_its_daily_token_budget_is_refused_until_midnight_and_across_a_restart() {
    let home = TempHome::init();
    let a = MockUpstream::start();
    // The mock reports 11 + 7 = 18 tokens per answer: the second request ends over 30.
    let text = format!(
        "serial = 2\n\n[access]\nrequire_api_keys = true\n\n[[access.groups]]\nname = \"default\"\n\
         models = [\"*\"]\ntokens_per_day = 30\n\n[[access.groups]]\nname = \"other\"\n\
         models = [\"*\"]\ntokens_per_month = 1000000\n\n{}{}",
        provider("a", "openai-compatible", &a.base_url(), None, ""),
        route("chat", &["a:ok"]),
    );
    home.write_policy(&text);
    let (_, key) = home.create_key("app");
    let run = home.admin(&[
        "--json", "keys", "create", "--label", "other", "--group", "other",
    ]);
    assert_eq!(run.code, 0, "{run:?}");
    let other = krouter_tests::home::json_field(&run.stdout, "secret");
    let krouter = Krouter::spawn(&home, &[]);
    assert_eq!(complete(&krouter, &key, &chat("chat")).status, 200);
    // A stream that does not ask for usage is charged too: krouter asks the upstream for it
    // and hides the extra usage chunk from the client.
    let plain_stream =
        r#"{"model":"chat","messages":[{"role":"user","content":"hi"}],"stream":true}"#;
    let streamed = complete(&krouter, &key, plain_stream);
    assert_eq!(streamed.status, 200, "{streamed:?}");
    assert!(
        streamed.body.ends_with("data: [DONE]\n\n"),
        "{}",
        streamed.body
    );
    assert!(
        !streamed.body.contains("\"choices\":[]"),
        "{}",
        streamed.body
    );
    assert!(
        !streamed.body.contains("prompt_tokens"),
        "{}",
        streamed.body
    );
    let sent = a.requests().last().unwrap().body.clone();
    assert!(
        String::from_utf8_lossy(&sent).ends_with(",\"stream_options\":{\"include_usage\":true}}"),
        "{}",
        String::from_utf8_lossy(&sent)
    );
    let refused = |krouter: &Krouter| {
        let reply = complete(krouter, &key, &chat("chat"));
        assert_eq!(reply.status, 429, "{reply:?}");
        let text = error_message(&reply, false, "budget");
        assert!(text.contains("daily token budget"), "{text}");
        assert!(!text.contains("kid_"), "{text}");
        let wait: u64 = reply.header("retry-after").unwrap().parse().unwrap();
        assert!((1..=86_400).contains(&wait), "{reply:?}");
        reply
    };
    let reply = refused(&krouter);
    // Anthropic clients get their own shape.
    let url = krouter.url("/v1/messages");
    let anthropic = post_anthropic(&url, &key, &message("chat", false));
    assert_eq!(anthropic.status, 429, "{anthropic:?}");
    // Another group is not affected.
    assert_eq!(complete(&krouter, &other, &chat("chat")).status, 200);
    assert_eq!(seen(&a, "ok"), 3);
    let (status, log) = krouter.stop();
    assert!(status.success(), "{log}");

    // The spend is read back from state.sqlite: still refused after a restart.
    let krouter = Krouter::spawn(&home, &[]);
    let again = refused(&krouter);
    assert_eq!(complete(&krouter, &other, &chat("chat")).status, 200);
    let (status, log) = krouter.stop();
    assert!(status.success(), "{log}");
    assert_nothing_leaked(&home, &log, &[reply, again, anthropic], &[&key, &other]);
}
