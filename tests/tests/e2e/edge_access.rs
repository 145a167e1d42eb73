//! Who may talk to krouter, through the real binary: the client address (the socket peer, or
//! what a trusted proxy says in `X-Forwarded-For`; IPv6 counted per /64), the policy's allow
//! and deny lists, the brute-force lockout (kept in `state/state.sqlite` across restarts), the
//! per-key and per-address request rates (changed by a policy reload), CORS, and the log lines
//! authentication failures and lockouts leave (with the address and the reason, never a key,
//! and never a line a client forged).
//!
//! Each test runs its own `krouter` on its own home, so locking `127.0.0.1` in one test does
//! not touch another. No assertion is about speed: sleeps only ever wait *past* a window.

use std::time::{Duration, Instant};

use krouter_tests::client::{Reply, send};
use krouter_tests::home::{TempHome, json_field};
use krouter_tests::krouter::Krouter;
use krouter_tests::leak::{assert_absent, assert_absent_from_files};
use krouter_tests::raw::{Outcome, Raw};
use krouter_tests::upstream::MockUpstream;
use rusqlite::{Connection, OpenFlags};
use serde_json::Value;

use super::metrics::{scrape, value};

/// How long a log line or a policy reload may take to show (the watcher looks every 250 ms,
/// the log is flushed every 50 ms); generous for a loaded two-core machine.
const DEADLINE: Duration = Duration::from_secs(10);
/// The first serial these tests write (`init` wrote serial 1).
const FIRST_SERIAL: u64 = 2;
/// A lockout that a test's deliberate failures never trip.
const LENIENT_LOCKOUT: &str = "[access.lockout]\nmax_failures = 1000\n\n";
/// The message of the log line every failed authentication leaves.
const AUTH_FAILED: &str = "authentication failed";
/// The message of the line refusals at the per-address connection cap leave.
const PER_ADDRESS_CAP: &str = "per-address connection cap reached: new connections from an address that holds its share refused with 503";

/// The message of the log line a lockout leaves.
const LOCKED_OUT: &str = "client locked out after failed authentications";

// === policy text and keys ===

/// A signed-policy text: `[access]` with `require_api_keys = true` and the `access` lines
/// (`key = value`), then `tables` (`[access.lockout]`, `[[access.groups]]`), then provider
/// `mock` (the mock upstream, no credential) and route `chat` to it.
fn edge_policy(serial: u64, access: &str, tables: &str, upstream: &MockUpstream) -> String {
    format!(
        "serial = {serial}\n\n[access]\nrequire_api_keys = true\n{access}\n\n{tables}\n\
         [[providers]]\nname = \"mock\"\nkind = \"openai-compatible\"\nbase_url = \"{}\"\n\n\
         [[routes]]\nmodel = \"chat\"\ntargets = [\"mock:real-model\"]\n",
        upstream.base_url()
    )
}

/// A fresh home whose policy is [`edge_policy`] with `access` and `tables` at
/// [`FIRST_SERIAL`], in front of a fresh mock upstream.
fn edge_home(access: &str, tables: &str) -> (TempHome, MockUpstream) {
    let home = TempHome::init();
    let upstream = MockUpstream::start();
    home.write_policy(&edge_policy(FIRST_SERIAL, access, tables, &upstream));
    (home, upstream)
}

/// Creates a key with `krouter-admin keys create --label LABEL` and `extra` arguments;
/// returns its id and the key.
fn create_key(home: &TempHome, label: &str, extra: &[&str]) -> (String, String) {
    let mut args = vec!["--json", "keys", "create", "--label", label];
    args.extend_from_slice(extra);
    let run = home.admin(&args);
    assert_eq!(run.code, 0, "{run:?}");
    (
        json_field(&run.stdout, "id"),
        json_field(&run.stdout, "secret"),
    )
}

/// A well-formed key with a wrong checksum: `key` with one body character changed.
fn bad_checksum(key: &str) -> String {
    let mut chars: Vec<char> = key.chars().collect();
    let at = "sk-krouter-".len() + 3;
    chars[at] = if chars[at] == 'A' { 'B' } else { 'A' };
    chars.into_iter().collect()
}

// === requests ===

fn chat_body(model: &str) -> String {
    serde_json::json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}).to_string()
}

/// `POST /v1/chat/completions` (route `chat`) as an OpenAI SDK sends it, with a bearer key
/// if any and an `X-Forwarded-For` header if any.
fn chat_as(krouter: &Krouter, key: Option<&str>, forwarded_for: Option<&str>) -> Reply {
    let auth = key.map(|k| format!("Bearer {k}"));
    let mut headers = vec![("content-type", "application/json")];
    if let Some(auth) = auth.as_deref() {
        headers.push(("authorization", auth));
    }
    if let Some(xff) = forwarded_for {
        headers.push(("x-forwarded-for", xff));
    }
    send(
        "POST",
        &krouter.url("/v1/chat/completions"),
        &headers,
        &chat_body("chat"),
    )
}

/// `POST /v1/messages` as an Anthropic SDK sends it (`x-api-key`, `anthropic-version`).
fn messages_as(krouter: &Krouter, key: Option<&str>, forwarded_for: Option<&str>) -> Reply {
    let mut headers = vec![
        ("content-type", "application/json"),
        ("anthropic-version", "2023-06-01"),
    ];
    if let Some(key) = key {
        headers.push(("x-api-key", key));
    }
    if let Some(xff) = forwarded_for {
        headers.push(("x-forwarded-for", xff));
    }
    let body = r#"{"model":"chat","max_tokens":16,"messages":[{"role":"user","content":"hi"}]}"#;
    send("POST", &krouter.url("/v1/messages"), &headers, body)
}

// === replies ===

/// `Retry-After` as whole seconds; panics if absent or not a number.
fn retry_after(reply: &Reply, row: &str) -> u64 {
    let value = reply
        .header("retry-after")
        .unwrap_or_else(|| panic!("{row}: no Retry-After: {reply:?}"));
    value
        .parse()
        .unwrap_or_else(|_| panic!("{row}: Retry-After {value:?} is not whole seconds"))
}

/// Asserts that a connection to `krouter` is answered `403` before it sends anything, and
/// closed.
fn assert_refused_as_it_connects(krouter: &Krouter, row: &str) {
    use std::io::Read as _;
    let mut raw = std::net::TcpStream::connect(krouter.addr).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut answer = Vec::new();
    raw.read_to_end(&mut answer).unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 403 Forbidden\r\n")
            && answer.contains("\r\nconnection: close\r\n")
            && answer.contains("\r\ncache-control: no-store\r\n")
            && answer.ends_with("\"type\":\"permission_error\",\"param\":null,\"code\":null}}\n"),
        "{row}: {answer}"
    );
}

/// Asserts `status` and the OpenAI error object `{"error":{"type":KIND,...}}`.
fn assert_openai_error(reply: &Reply, status: u16, kind: &str, row: &str) {
    assert_eq!(reply.status, status, "{row}: {reply:?}");
    let body = reply.json();
    assert!(body.get("type").is_none(), "{row}: {}", reply.body);
    assert_eq!(body["error"]["type"], kind, "{row}: {}", reply.body);
    assert!(
        body["error"]["message"].is_string(),
        "{row}: {}",
        reply.body
    );
    assert!(
        body["error"].get("param").is_some(),
        "{row}: {}",
        reply.body
    );
}

/// Asserts `status` and the Anthropic error object `{"type":"error","error":{"type":KIND}}`.
fn assert_anthropic_error(reply: &Reply, status: u16, kind: &str, row: &str) {
    assert_eq!(reply.status, status, "{row}: {reply:?}");
    let body = reply.json();
    assert_eq!(body["type"], "error", "{row}: {}", reply.body);
    assert_eq!(body["error"]["type"], kind, "{row}: {}", reply.body);
    assert!(
        body["error"]["message"].is_string(),
        "{row}: {}",
        reply.body
    );
}

/// Asserts a 429 in the OpenAI shape with a `Retry-After` in `1..=max_secs`; returns it.
fn assert_openai_429(reply: &Reply, max_secs: u64, row: &str) -> u64 {
    assert_openai_error(reply, 429, "rate_limit_error", row);
    let wait = retry_after(reply, row);
    assert!((1..=max_secs).contains(&wait), "{row}: Retry-After {wait}");
    wait
}

// === the log ===

/// Every log line, parsed: each must be one JSON object (a forged or broken line fails here).
fn log_lines(krouter: &Krouter) -> Vec<Value> {
    krouter
        .log()
        .lines()
        .map(|line| {
            let value: Value = serde_json::from_str(line).unwrap_or_else(|e| {
                panic!("a log line that is not one JSON object ({e}): {line:?}")
            });
            assert!(
                value.is_object(),
                "a log line that is not an object: {line:?}"
            );
            value
        })
        .collect()
}

/// The log lines whose `message` is `message`.
fn lines_with(krouter: &Krouter, message: &str) -> Vec<Value> {
    log_lines(krouter)
        .into_iter()
        .filter(|line| line["message"] == message)
        .collect()
}

/// Waits until at least `n` lines carry `message`; returns them all.
fn wait_for_lines(krouter: &Krouter, message: &str, n: usize) -> Vec<Value> {
    let started = Instant::now();
    loop {
        let lines = lines_with(krouter, message);
        if lines.len() >= n {
            return lines;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "wanted {n} lines {message:?}, saw {}:\n{}",
            lines.len(),
            krouter.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Writes and signs `text` as the home's policy and waits until the running proxy applied
/// `serial`.
fn swap_policy(home: &TempHome, krouter: &Krouter, serial: u64, text: &str) {
    home.write_policy(text);
    let started = Instant::now();
    while !lines_with(krouter, "policy applied")
        .iter()
        .any(|line| line["serial"] == serial)
    {
        assert!(
            started.elapsed() < DEADLINE,
            "policy {serial} never applied:\n{}",
            krouter.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

// === the state database ===

/// `state/state.sqlite`, opened read-only as a report would.
fn state_db(home: &TempHome) -> Connection {
    Connection::open_with_flags(
        home.root.join("state/state.sqlite"),
        OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("the state database opens read-only")
}

/// The `lockouts` rows: `(client, until_ms)`, by client.
fn lockout_rows(home: &TempHome) -> Vec<(String, i64)> {
    let db = state_db(home);
    let mut query = db
        .prepare("SELECT client, until FROM lockouts ORDER BY client")
        .expect("the lockouts table");
    query
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .expect("lockout rows")
        .map(|row| row.expect("a lockout row"))
        .collect()
}

/// How many `auth_failures` rows name `client`.
fn failure_count(home: &TempHome, client: &str) -> i64 {
    state_db(home)
        .query_row(
            "SELECT count(*) FROM auth_failures WHERE client = ?1",
            [client],
            |row| row.get(0),
        )
        .expect("the auth_failures table")
}

/// Now, in unix milliseconds.
fn unix_ms() -> i64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970");
    i64::try_from(since.as_millis()).expect("a representable time")
}

/// Stops `krouter` with SIGTERM and asserts a clean exit; returns its log.
fn stop(krouter: Krouter) -> String {
    let (status, log) = krouter.stop();
    assert!(
        status.success(),
        "krouter did not exit cleanly: {status:?}\n{log}"
    );
    log
}

// === lockout ===

/// The default thresholds (10 failures in 60 s lock for 15 minutes), every reason a key is
/// refused, the log lines they leave, the 429 a locked address gets before any key is looked
/// at, and the lock surviving a restart through `state.sqlite`.
#[test]
fn ten_failed_authentications_lock_the_address_even_for_a_valid_key_across_a_restart() {
    // No [access.lockout]: the defaults. The unauthenticated rate (default 120) is not reached.
    let (home, upstream) = edge_home("", "");
    let (_, valid) = create_key(&home, "valid", &[]);
    let (revoked_id, revoked) = create_key(&home, "revoked", &[]);
    let run = home.admin(&["keys", "revoke", &revoked_id]);
    assert_eq!(run.code, 0, "{run:?}");
    let (expired_id, expired) = create_key(&home, "expired", &["--expires", "0s"]);
    // Well formed, right checksum, but another home's: unknown here.
    let elsewhere = TempHome::init();
    let (_, unknown) = create_key(&elsewhere, "unknown", &[]);
    let typo = bad_checksum(&valid);

    let krouter = Krouter::spawn(&home, &[]);
    assert_eq!(chat_as(&krouter, Some(&valid), None).status, 200);

    // (key sent, reason logged, key id logged)
    let attempts: [(Option<&str>, &str, Option<&str>); 5] = [
        (None, "no API key", None),
        (Some(&typo), "invalid API key", None),
        (Some(&unknown), "invalid API key", None),
        (Some(&revoked), "revoked API key", Some(&revoked_id)),
        (Some(&expired), "expired API key", Some(&expired_id)),
    ];
    let mut replies = Vec::new();
    for round in 0..2 {
        for (n, (key, reason, _)) in attempts.iter().enumerate() {
            let row = format!("attempt {} ({reason})", round * 5 + n + 1);
            let reply = chat_as(&krouter, *key, None);
            if round == 1 && n == 4 {
                // The tenth failure locks, and is answered as the lock.
                let wait = assert_openai_429(&reply, 900, &row);
                assert!(wait > 800, "{row}: a 15-minute lock, Retry-After {wait}");
            } else {
                assert_openai_error(&reply, 401, "invalid_request_error", &row);
                assert!(reply.header("retry-after").is_none(), "{row}: {reply:?}");
            }
            replies.push(reply);
        }
    }

    // Locked: a valid key is refused in either dialect, with Retry-After.
    let locked = chat_as(&krouter, Some(&valid), None);
    assert_openai_429(&locked, 900, "a valid key from the locked address");
    let locked_anthropic = messages_as(&krouter, Some(&valid), None);
    assert_anthropic_error(
        &locked_anthropic,
        429,
        "rate_limit_error",
        "a valid key over the Anthropic API from the locked address",
    );
    assert!(retry_after(&locked_anthropic, "anthropic lock") >= 1);
    replies.extend([locked, locked_anthropic]);

    // Each failure left one line with the address and the reason; the key id only for a
    // key that was found.
    let failures = wait_for_lines(&krouter, AUTH_FAILED, 10);
    assert_eq!(failures.len(), 10, "{failures:#?}");
    for (line, (_, reason, key_id)) in failures.iter().zip(attempts.iter().cycle()) {
        assert_eq!(line["client"], "127.0.0.1", "{line}");
        assert_eq!(line["reason"], *reason, "{line}");
        assert_eq!(line["key_id"].as_str(), *key_id, "{line}");
    }
    let lock = wait_for_lines(&krouter, LOCKED_OUT, 1);
    assert_eq!(lock.len(), 1, "{lock:#?}");
    assert_eq!(lock[0]["client"], "127.0.0.1", "{}", lock[0]);
    assert_eq!(lock[0]["failures"], 10, "{}", lock[0]);
    assert_eq!(lock[0]["window_secs"], 60, "{}", lock[0]);
    assert_eq!(lock[0]["locked_secs"], 900, "{}", lock[0]);

    // Before any key is looked at: a bad key from the locked address is not another failure.
    let again = chat_as(&krouter, Some(&typo), None);
    assert_openai_429(&again, 900, "a bad key from the locked address");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        lines_with(&krouter, AUTH_FAILED).len(),
        10,
        "a locked address's key was still checked:\n{}",
        krouter.log()
    );
    assert_eq!(
        upstream.requests().len(),
        1,
        "only the first request went upstream"
    );

    // The lock is in state.sqlite, and a restart keeps it.
    let log = stop(krouter);
    let rows = lockout_rows(&home);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].0, "127.0.0.1", "{rows:?}");
    let left = rows[0].1 - unix_ms();
    assert!(
        (800_000..=900_000).contains(&left),
        "the lock ends in {left} ms, not about 15 minutes"
    );
    // The lock used up the failures that caused it, in the database as in memory.
    assert_eq!(failure_count(&home, "127.0.0.1"), 0);

    let krouter = Krouter::spawn(&home, &[]);
    let after = chat_as(&krouter, Some(&valid), None);
    assert_openai_429(&after, 900, "a valid key after the restart");
    assert_eq!(
        upstream.requests().len(),
        1,
        "the locked address reached the upstream"
    );
    let log = format!("{log}{}", stop(krouter));

    // No key text anywhere: the log, the replies, the home's files.
    let secrets = [
        valid.as_str(),
        revoked.as_str(),
        expired.as_str(),
        unknown.as_str(),
        typo.as_str(),
        "sk-krouter-",
    ];
    assert_absent(&log, &secrets, "the krouter log");
    for reply in &replies {
        assert_absent(&reply.body, &secrets, "a reply body");
        assert_absent(&format!("{:?}", reply.headers), &secrets, "reply headers");
    }
    assert_absent_from_files(&home.root, &secrets[..5], &[]);
}

/// The thresholds are the policy's: a failure older than `window_secs` no longer counts,
/// `max_failures` lock, and the lock ends after `lockout_secs`.
#[test]
fn the_lockout_window_and_duration_come_from_the_policy() {
    let lockout = "[access.lockout]\nmax_failures = 2\nwindow_secs = 3\nlockout_secs = 3\n\n";
    let (home, _upstream) = edge_home("", lockout);
    let (_, valid) = create_key(&home, "valid", &[]);
    let krouter = Krouter::spawn(&home, &[]);

    assert_eq!(chat_as(&krouter, None, None).status, 401, "failure 1");
    // Past the window: the first failure no longer counts.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(
        chat_as(&krouter, None, None).status,
        401,
        "a failure after the window closed must not lock (the first one expired)"
    );
    let locking = chat_as(&krouter, None, None);
    let wait = assert_openai_429(&locking, 3, "the second failure within the window");
    assert_openai_429(
        &chat_as(&krouter, Some(&valid), None),
        3,
        "locked, valid key",
    );
    let lock = wait_for_lines(&krouter, LOCKED_OUT, 1);
    assert_eq!(lock[0]["failures"], 2, "{}", lock[0]);
    assert_eq!(lock[0]["window_secs"], 3, "{}", lock[0]);
    assert_eq!(lock[0]["locked_secs"], 3, "{}", lock[0]);

    // Past the lock: served again.
    std::thread::sleep(Duration::from_secs(wait + 1));
    assert_eq!(chat_as(&krouter, Some(&valid), None).status, 200);
}

/// Failure counts, not only locks, are kept in `state.sqlite`: failures before a restart
/// and after it add up.
#[test]
fn failure_counts_survive_a_restart() {
    let lockout = "[access.lockout]\nmax_failures = 3\nwindow_secs = 3600\nlockout_secs = 600\n\n";
    let access = "trusted_proxies = [\"127.0.0.1\"]";
    let (home, _upstream) = edge_home(access, lockout);
    let (_, valid) = create_key(&home, "valid", &[]);

    let krouter = Krouter::spawn(&home, &[]);
    for n in 1..=2 {
        let reply = chat_as(&krouter, None, Some("198.51.100.20"));
        assert_eq!(reply.status, 401, "failure {n}: {reply:?}");
    }
    stop(krouter);
    assert_eq!(failure_count(&home, "198.51.100.20"), 2);
    assert!(lockout_rows(&home).is_empty());

    let krouter = Krouter::spawn(&home, &[]);
    // A first failure from a fresh address is only counted ...
    let control = chat_as(&krouter, None, Some("198.51.100.21"));
    assert_eq!(control.status, 401, "{control:?}");
    // ... but the third in the window, two of them from before the restart, locks.
    let third = chat_as(&krouter, None, Some("198.51.100.20"));
    assert_openai_429(&third, 600, "the third failure, after a restart");
    assert_openai_429(
        &chat_as(&krouter, Some(&valid), Some("198.51.100.20")),
        600,
        "a valid key from the address locked across the restart",
    );
    assert_eq!(
        chat_as(&krouter, Some(&valid), Some("198.51.100.21")).status,
        200
    );

    // Killed rather than stopped (a crash, an OOM kill): once written, the lock holds.
    let started = Instant::now();
    while lockout_rows(&home).is_empty() {
        assert!(
            started.elapsed() < DEADLINE,
            "the lock never reached state.sqlite"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(krouter);
    let krouter = Krouter::spawn(&home, &[]);
    assert_openai_429(
        &chat_as(&krouter, Some(&valid), Some("198.51.100.20")),
        600,
        "a valid key from the locked address after SIGKILL and a restart",
    );
    stop(krouter);
    let rows = lockout_rows(&home);
    assert_eq!(
        rows.iter().map(|(c, _)| c.as_str()).collect::<Vec<_>>(),
        ["198.51.100.20"]
    );
}

/// A restart neither forgives nor punishes twice: failures that already caused a lock are
/// spent when the lock is taken (the running proxy forgets them), so after the lock ends and
/// a restart, one more failure is counted like any other instead of locking again at once.
#[test]
fn failures_spent_on_an_ended_lock_do_not_lock_again_after_a_restart() {
    let lockout = "[access.lockout]\nmax_failures = 3\nwindow_secs = 3600\nlockout_secs = 2\n\n";
    let (home, _upstream) = edge_home("", lockout);
    let (_, valid) = create_key(&home, "valid", &[]);

    let krouter = Krouter::spawn(&home, &[]);
    assert_eq!(chat_as(&krouter, None, None).status, 401, "failure 1");
    assert_eq!(chat_as(&krouter, None, None).status, 401, "failure 2");
    let wait = assert_openai_429(&chat_as(&krouter, None, None), 2, "failure 3 locks");
    std::thread::sleep(Duration::from_secs(wait + 1));
    assert_eq!(
        chat_as(&krouter, Some(&valid), None).status,
        200,
        "the lock ended"
    );
    // Without a restart, the running proxy counts a new failure from zero.
    assert_eq!(
        chat_as(&krouter, None, None).status,
        401,
        "the first failure after the lock ended"
    );
    stop(krouter);

    let krouter = Krouter::spawn(&home, &[]);
    let reply = chat_as(&krouter, None, None);
    assert_eq!(
        reply.status, 401,
        "BUG: after a lock ended and a restart, the second failure since the lock (max_failures \
         = 3) locked the address again: start-up restores from auth_failures the failures that \
         were already spent on the ended lock (the running proxy clears them when it locks). \
         Reply: {reply:?}"
    );
    stop(krouter);
}

// === the client address ===

/// Behind a trusted proxy the client is the nearest untrusted `X-Forwarded-For` entry: that
/// address is locked, other forwarded addresses and the proxy itself are still served, and an
/// entry the client wrote itself cannot move the blame.
#[test]
fn a_client_behind_a_trusted_proxy_is_locked_by_its_forwarded_address() {
    let lockout = "[access.lockout]\nmax_failures = 3\nlockout_secs = 600\n\n";
    let access = "trusted_proxies = [\"127.0.0.0/8\"]";
    let (home, _upstream) = edge_home(access, lockout);
    let (_, valid) = create_key(&home, "valid", &[]);
    let krouter = Krouter::spawn(&home, &[]);

    let attacker = Some("198.51.100.7");
    assert_eq!(
        chat_as(&krouter, Some("sk-krouter-nope"), attacker).status,
        401
    );
    assert_eq!(chat_as(&krouter, None, attacker).status, 401);
    let wait = assert_openai_429(&chat_as(&krouter, None, attacker), 600, "third failure");
    assert!(wait > 500, "a 600 s lock, Retry-After {wait}");

    let rows: &[(&str, Option<&str>, u16)] = &[
        ("the locked forwarded address", attacker, 429),
        // The proxy appended .7 after a value the client sent: the client is still .7.
        (
            "a client-written entry before the proxy's",
            Some("198.51.100.9, 198.51.100.7"),
            429,
        ),
        // The client is .9 (the proxy's entry); a client-written .7 does not lock it out.
        (
            "the locked address written by another client",
            Some("198.51.100.7, 198.51.100.9"),
            200,
        ),
        ("another forwarded address", Some("198.51.100.8"), 200),
        ("the trusted proxy itself", None, 200),
    ];
    for (row, xff, status) in rows {
        let reply = chat_as(&krouter, Some(&valid), *xff);
        assert_eq!(reply.status, *status, "{row}: {reply:?}");
    }

    let failures = wait_for_lines(&krouter, AUTH_FAILED, 3);
    assert_eq!(failures.len(), 3, "{failures:#?}");
    for line in &failures {
        assert_eq!(line["client"], "198.51.100.7", "{line}");
        assert!(line["reason"].is_string(), "{line}");
        assert!(
            line.get("key_id").is_none(),
            "an unknown key has no id: {line}"
        );
    }
    let lock = wait_for_lines(&krouter, LOCKED_OUT, 1);
    assert_eq!(lock[0]["client"], "198.51.100.7", "{}", lock[0]);

    let log = stop(krouter);
    assert_absent(&log, &[valid.as_str(), "sk-krouter-"], "the krouter log");
    let rows = lockout_rows(&home);
    assert_eq!(
        rows.iter().map(|(c, _)| c.as_str()).collect::<Vec<_>>(),
        ["198.51.100.7"]
    );
}

/// Without trusted proxies `X-Forwarded-For` is ignored: failures sent "as" 198.51.100.7 lock
/// the socket peer, 127.0.0.1, whatever the header says.
#[test]
fn without_trusted_proxies_forwarded_for_is_ignored() {
    let lockout = "[access.lockout]\nmax_failures = 3\n\n";
    let (home, _upstream) = edge_home("", lockout);
    let (_, valid) = create_key(&home, "valid", &[]);
    let krouter = Krouter::spawn(&home, &[]);

    let claimed = Some("198.51.100.7");
    assert_eq!(chat_as(&krouter, None, claimed).status, 401);
    assert_eq!(chat_as(&krouter, None, claimed).status, 401);
    assert_openai_429(&chat_as(&krouter, None, claimed), 900, "third failure");

    // The peer is locked, under any header.
    for xff in [None, Some("198.51.100.99"), Some("198.51.100.7")] {
        let reply = chat_as(&krouter, Some(&valid), xff);
        assert_openai_429(
            &reply,
            900,
            &format!("a valid key with X-Forwarded-For {xff:?}"),
        );
    }
    let failures = wait_for_lines(&krouter, AUTH_FAILED, 3);
    for line in &failures {
        assert_eq!(line["client"], "127.0.0.1", "{line}");
    }
    assert_eq!(
        wait_for_lines(&krouter, LOCKED_OUT, 1)[0]["client"],
        "127.0.0.1"
    );
    let log = stop(krouter);
    assert!(
        !log.contains("198.51.100"),
        "an untrusted X-Forwarded-For reached the log:\n{log}"
    );
    let rows = lockout_rows(&home);
    assert_eq!(
        rows.iter().map(|(c, _)| c.as_str()).collect::<Vec<_>>(),
        ["127.0.0.1"]
    );
}

/// IPv6, over a real `[::1]` listener: failures from different addresses of one /64 add up
/// and lock the whole /64, another /64 is still served; the socket peer `::1` is itself
/// counted by its /64; the state database names /64s.
#[test]
fn ipv6_clients_are_counted_and_locked_per_64() {
    let lockout = "[access.lockout]\nmax_failures = 3\n\n";
    let access = "trusted_proxies = [\"::1\"]";
    let (home, _upstream) = edge_home(access, lockout);
    let (_, valid) = create_key(&home, "valid", &[]);
    let krouter = Krouter::spawn(&home, &[("KROUTER_LISTEN", "[::1]:0")]);
    assert!(krouter.addr.is_ipv6(), "{}", krouter.addr);
    assert_eq!(
        chat_as(&krouter, Some(&valid), None).status,
        200,
        "over IPv6"
    );

    // Three addresses, one /64 (the last as a proxy may write it, bracketed with a port).
    assert_eq!(chat_as(&krouter, None, Some("2001:db8:1:2::1")).status, 401);
    assert_eq!(chat_as(&krouter, None, Some("2001:db8:1:2::2")).status, 401);
    assert_openai_429(
        &chat_as(&krouter, None, Some("[2001:db8:1:2::3]:443")),
        900,
        "the third failure from the /64",
    );
    let rows: &[(&str, Option<&str>, u16)] = &[
        (
            "another address in the locked /64",
            Some("2001:db8:1:2:ffff::9"),
            429,
        ),
        ("the next /64", Some("2001:db8:1:3::1"), 200),
        ("the proxy itself, ::1", None, 200),
    ];
    for (row, xff, status) in rows {
        let reply = chat_as(&krouter, Some(&valid), *xff);
        assert_eq!(reply.status, *status, "{row}: {reply:?}");
    }
    let failures = wait_for_lines(&krouter, AUTH_FAILED, 3);
    let clients: Vec<&str> = failures
        .iter()
        .filter_map(|l| l["client"].as_str())
        .collect();
    assert_eq!(
        clients,
        ["2001:db8:1:2::1", "2001:db8:1:2::2", "2001:db8:1:2::3"],
        "each failure logged with its own address"
    );
    assert_eq!(
        wait_for_lines(&krouter, LOCKED_OUT, 1)[0]["client"],
        "2001:db8:1:2::/64"
    );

    // The IPv6 socket peer, without a forwarded address, is locked by its own /64.
    assert_eq!(chat_as(&krouter, None, None).status, 401);
    assert_eq!(chat_as(&krouter, None, None).status, 401);
    assert_openai_429(&chat_as(&krouter, None, None), 900, "::1's third failure");
    assert_openai_429(&chat_as(&krouter, Some(&valid), None), 900, "::1 locked");
    assert_eq!(
        wait_for_lines(&krouter, LOCKED_OUT, 2)[1]["client"],
        "::/64"
    );
    stop(krouter);
    let rows = lockout_rows(&home);
    assert_eq!(
        rows.iter().map(|(c, _)| c.as_str()).collect::<Vec<_>>(),
        ["2001:db8:1:2::/64", "::/64"]
    );
}

/// Allow and deny lists come before anything else: a denied peer is answered 403 as it
/// connects, before it has sent anything, and closed, so its requests (valid or bad keys)
/// are never read, checked or counted; deny wins over allow; behind a trusted proxy the lists
/// apply to the forwarded address (a 403 in the dialect's shape, even with a valid key, and
/// its bad keys never counted); the lists change with a policy reload.
#[test]
fn allow_and_deny_lists_are_checked_before_anything_else() {
    let home = TempHome::init();
    let upstream = MockUpstream::start();
    home.write_policy(&edge_policy(
        FIRST_SERIAL,
        "ip_deny = [\"127.0.0.0/8\"]",
        "",
        &upstream,
    ));
    let (_, valid) = create_key(&home, "valid", &[]);
    let krouter = Krouter::spawn(&home, &[]);

    // A denied peer, again and again (more often than the lockout allows failures): each
    // connection is answered as it opens, before the client sends anything, and closed, so
    // no request from it (its key, its path) is ever read.
    for n in 1..=12 {
        assert_refused_as_it_connects(&krouter, &format!("denied peer, connection {n}"));
    }
    assert_eq!(
        value(
            &scrape(&krouter),
            "krouter_connections_refused_total{reason=\"address_denied\"}"
        ),
        12.0
    );
    // Allow list: an address outside it is refused.
    swap_policy(
        &home,
        &krouter,
        FIRST_SERIAL + 1,
        &edge_policy(
            FIRST_SERIAL + 1,
            "ip_allow = [\"10.0.0.0/8\"]",
            "",
            &upstream,
        ),
    );
    assert_refused_as_it_connects(&krouter, "a peer outside the allow list");

    // Behind a trusted proxy, the lists judge the forwarded client.
    let access = "trusted_proxies = [\"127.0.0.1\"]\nip_allow = [\"198.51.100.0/24\"]\n\
                  ip_deny = [\"198.51.100.66\"]";
    swap_policy(
        &home,
        &krouter,
        FIRST_SERIAL + 2,
        &edge_policy(FIRST_SERIAL + 2, access, "", &upstream),
    );
    let rows: &[(&str, Option<&str>, u16)] = &[
        ("an allowed forwarded address", Some("198.51.100.7"), 200),
        (
            "a denied address inside the allowed network",
            Some("198.51.100.66"),
            403,
        ),
        (
            "a forwarded address outside the allow list",
            Some("203.0.113.5"),
            403,
        ),
        (
            "an IPv6 address outside the allow list",
            Some("2001:db8::1"),
            403,
        ),
        ("the proxy itself, outside the allow list", None, 403),
    ];
    for (row, xff, status) in rows {
        let reply = chat_as(&krouter, Some(&valid), *xff);
        assert_eq!(reply.status, *status, "{row}: {reply:?}");
    }
    assert_anthropic_error(
        &messages_as(&krouter, Some(&valid), Some("198.51.100.66")),
        403,
        "permission_error",
        "a denied forwarded address, Anthropic API",
    );
    for n in 1..=12 {
        let reply = chat_as(&krouter, Some("sk-krouter-guess"), Some("198.51.100.66"));
        assert_eq!(
            reply.status, 403,
            "bad key {n} from a denied forwarded address: {reply:?}"
        );
    }
    // The allowed client still works: the denied one's bad keys locked nobody.
    assert_eq!(
        chat_as(&krouter, Some(&valid), Some("198.51.100.7")).status,
        200
    );

    std::thread::sleep(Duration::from_millis(300));
    assert!(
        lines_with(&krouter, AUTH_FAILED).is_empty(),
        "a denied address's key was checked:\n{}",
        krouter.log()
    );
    assert_eq!(
        upstream.requests().len(),
        2,
        "only the two allowed requests went upstream"
    );
    stop(krouter);
    assert!(lockout_rows(&home).is_empty());
    assert_eq!(failure_count(&home, "127.0.0.1"), 0);
    assert_eq!(failure_count(&home, "198.51.100.66"), 0);
}

// === rate limits ===

/// A group's `requests_per_minute` applies per key: the fourth request of a key at 3 per
/// minute gets 429 with `Retry-After` in the dialect's error shape and never reaches the
/// upstream; another key of the group and a key of an unlimited group are unaffected; a
/// reload with a new figure applies at once, raised or lowered.
#[test]
fn a_groups_request_rate_applies_per_key_and_follows_a_reload() {
    let home = TempHome::init();
    let upstream = MockUpstream::start();
    let groups = |rpm: u32| {
        format!(
            "{LENIENT_LOCKOUT}[[access.groups]]\nname = \"default\"\nmodels = [\"*\"]\n\n\
             [[access.groups]]\nname = \"metered\"\nmodels = [\"*\"]\nrequests_per_minute = {rpm}\n\n"
        )
    };
    home.write_policy(&edge_policy(FIRST_SERIAL, "", &groups(3), &upstream));
    let (_, first) = create_key(&home, "first", &["--group", "metered"]);
    let (_, second) = create_key(&home, "second", &["--group", "metered"]);
    let (_, free) = create_key(&home, "free", &[]);
    let krouter = Krouter::spawn(&home, &[]);

    for n in 1..=3 {
        let reply = chat_as(&krouter, Some(&first), None);
        assert_eq!(reply.status, 200, "request {n} of 3: {reply:?}");
    }
    assert_openai_429(
        &chat_as(&krouter, Some(&first), None),
        60,
        "the fourth request",
    );
    let anthropic = messages_as(&krouter, Some(&first), None);
    assert_anthropic_error(
        &anthropic,
        429,
        "rate_limit_error",
        "the fifth, Anthropic API",
    );
    let wait = retry_after(&anthropic, "the fifth, Anthropic API");
    assert!((1..=60).contains(&wait), "Retry-After {wait}");
    assert!(anthropic.header("request-id").is_some(), "{anthropic:?}");

    assert_eq!(
        chat_as(&krouter, Some(&second), None).status,
        200,
        "another key"
    );
    for n in 1..=6 {
        let reply = chat_as(&krouter, Some(&free), None);
        assert_eq!(reply.status, 200, "unlimited group, request {n}: {reply:?}");
    }
    assert_eq!(
        upstream.requests().len(),
        3 + 1 + 6,
        "a limited request went upstream"
    );
    // A rate limit is not a failed authentication.
    assert!(
        lines_with(&krouter, AUTH_FAILED).is_empty(),
        "{}",
        krouter.log()
    );

    // Raised: the limited key is admitted again at once.
    swap_policy(
        &home,
        &krouter,
        FIRST_SERIAL + 1,
        &edge_policy(FIRST_SERIAL + 1, "", &groups(10), &upstream),
    );
    let reply = chat_as(&krouter, Some(&first), None);
    assert_eq!(reply.status, 200, "after raising the limit: {reply:?}");

    // Lowered to 1: one request per key.
    swap_policy(
        &home,
        &krouter,
        FIRST_SERIAL + 2,
        &edge_policy(FIRST_SERIAL + 2, "", &groups(1), &upstream),
    );
    assert_eq!(chat_as(&krouter, Some(&second), None).status, 200);
    let wait = assert_openai_429(&chat_as(&krouter, Some(&second), None), 60, "over 1/min");
    assert!(wait > 20, "one per minute, Retry-After {wait}");
}

/// Requests without a valid key are limited per client address: at 2 per minute the third
/// keyless request gets 429 instead of 401, a valid key from the same address is still
/// served, and another address has its own allowance.
#[test]
fn requests_without_a_valid_key_are_limited_per_address() {
    let home = TempHome::init();
    let upstream = MockUpstream::start();
    let access = "trusted_proxies = [\"127.0.0.1\"]\nunauthenticated_requests_per_minute = 2";
    home.write_policy(&edge_policy(
        FIRST_SERIAL,
        access,
        LENIENT_LOCKOUT,
        &upstream,
    ));
    let (_, valid) = create_key(&home, "valid", &[]);
    let krouter = Krouter::spawn(&home, &[]);

    assert_eq!(chat_as(&krouter, None, None).status, 401, "keyless 1");
    assert_eq!(
        chat_as(&krouter, Some("sk-krouter-nope"), None).status,
        401,
        "bad key 2"
    );
    let wait = assert_openai_429(&chat_as(&krouter, None, None), 60, "keyless 3");
    assert!(wait > 10, "two per minute, Retry-After {wait}");
    assert_anthropic_error(
        &messages_as(&krouter, None, None),
        429,
        "rate_limit_error",
        "keyless 4, Anthropic API",
    );
    assert_eq!(
        chat_as(&krouter, Some(&valid), None).status,
        200,
        "a valid key"
    );

    let other = Some("198.51.100.7");
    assert_eq!(
        chat_as(&krouter, None, other).status,
        401,
        "another address 1"
    );
    assert_anthropic_error(
        &messages_as(&krouter, None, other),
        401,
        "authentication_error",
        "another address 2",
    );
    assert_openai_429(&chat_as(&krouter, None, other), 60, "another address 3");
    assert_eq!(upstream.requests().len(), 1);

    // A reload with a higher figure applies at once: 401 again, not 429.
    let raised = access.replace("= 2", "= 1000");
    swap_policy(
        &home,
        &krouter,
        FIRST_SERIAL + 1,
        &edge_policy(FIRST_SERIAL + 1, &raised, LENIENT_LOCKOUT, &upstream),
    );
    assert_eq!(
        chat_as(&krouter, None, None).status,
        401,
        "after raising the limit"
    );
    assert_eq!(
        chat_as(&krouter, None, other).status,
        401,
        "after raising the limit"
    );
    stop(krouter);
}

/// Without `unauthenticated_requests_per_minute` the limit is 120 when keys are required, and
/// there is none when they are not.
#[test]
fn the_unauthenticated_limit_defaults_to_120_with_keys_and_none_without() {
    let (home, upstream) = edge_home("", LENIENT_LOCKOUT);
    let krouter = Krouter::spawn(&home, &[]);
    let models = |krouter: &Krouter| send("GET", &krouter.url("/v1/models"), &[], "");
    // 120 per minute refills one request every half second, so requests sent while the test
    // runs may add to the 120; the bound allows for exactly that, however slow the machine.
    let started = Instant::now();
    let mut refused = 0_u64;
    let limited = loop {
        let reply = models(&krouter);
        if reply.status != 401 {
            break reply;
        }
        refused += 1;
        assert!(refused < 2_000, "keyless requests were never limited");
    };
    let refills = started.elapsed().as_millis() / 500 + 1;
    assert_openai_429(&limited, 60, "the first keyless request over the limit");
    assert!(
        u128::from(refused) >= 120 && u128::from(refused) <= 120 + refills,
        "{refused} keyless requests answered 401 before the first 429; the default is 120 a \
         minute (plus {refills} refilled while the test ran)"
    );
    drop(krouter);

    let keyless = edge_policy(FIRST_SERIAL + 1, "", "", &upstream)
        .replace("require_api_keys = true", "require_api_keys = false");
    home.write_policy(&keyless);
    let krouter = Krouter::spawn(&home, &[]);
    for n in 1..=150 {
        let reply = models(&krouter);
        assert_eq!(reply.status, 200, "keyless policy, request {n}: {reply:?}");
    }
}

// === CORS ===

/// Listed origins only: a preflight from one is answered (204, the origin, methods, only the
/// allowed request headers, max-age) and its requests are readable (`Access-Control-Allow-
/// Origin`, `Vary: Origin`); any other origin is refused, preflight or not, even with a valid
/// key, and never reaches the upstream. `Access-Control-Allow-Credentials` is never sent.
#[test]
fn cors_answers_listed_origins_only_and_never_allows_credentials() {
    let access = "cors_origins = [\"https://app.example.com\", \"http://localhost:5173\"]";
    let (home, upstream) = edge_home(access, "");
    let (_, valid) = create_key(&home, "valid", &[]);
    let krouter = Krouter::spawn(&home, &[]);
    let url = krouter.url("/v1/chat/completions");
    let auth = format!("Bearer {valid}");
    let mut replies = Vec::new();

    let preflight = |origin: &str| {
        send(
            "OPTIONS",
            &url,
            &[
                ("origin", origin),
                ("access-control-request-method", "POST"),
                (
                    "access-control-request-headers",
                    "authorization, content-type, x-stainless-os, cookie, x-evil",
                ),
            ],
            "",
        )
    };
    for origin in ["https://app.example.com", "http://localhost:5173"] {
        let reply = preflight(origin);
        assert_eq!(reply.status, 204, "preflight from {origin}: {reply:?}");
        assert_eq!(reply.header("access-control-allow-origin"), Some(origin));
        assert_eq!(
            reply.header("access-control-allow-methods"),
            Some("GET, POST")
        );
        assert_eq!(
            reply.header("access-control-allow-headers"),
            Some("authorization, content-type, x-stainless-os"),
            "only the allowed request headers: {reply:?}"
        );
        assert_eq!(reply.header("access-control-max-age"), Some("600"));
        assert!(
            reply
                .headers
                .iter()
                .any(|(n, v)| n == "vary" && v.contains("Origin")),
            "{reply:?}"
        );
        replies.push(reply);
    }
    let refused_origins = [
        "https://evil.example",
        "https://app.example.com.evil.example",
        "http://app.example.com",
        "https://app.example.com:8443",
        "null",
    ];
    for origin in refused_origins {
        let reply = preflight(origin);
        assert_eq!(reply.status, 403, "preflight from {origin}: {reply:?}");
        assert!(
            reply.header("access-control-allow-origin").is_none(),
            "{reply:?}"
        );
        assert!(
            reply.header("access-control-allow-headers").is_none(),
            "{reply:?}"
        );
        replies.push(reply);
    }

    // Real requests.
    let post_from = |origin: Option<&str>| {
        let mut headers = vec![
            ("content-type", "application/json"),
            ("authorization", &*auth),
        ];
        if let Some(origin) = origin {
            headers.push(("origin", origin));
        }
        send("POST", &url, &headers, &chat_body("chat"))
    };
    let allowed = post_from(Some("https://app.example.com"));
    assert_eq!(allowed.status, 200, "{allowed:?}");
    assert_eq!(
        allowed.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert!(
        allowed
            .headers
            .iter()
            .any(|(n, v)| n == "vary" && v.contains("Origin")),
        "{allowed:?}"
    );
    let exposed = allowed
        .header("access-control-expose-headers")
        .unwrap_or_default();
    assert!(
        exposed.contains("retry-after") && exposed.contains("x-request-id"),
        "{allowed:?}"
    );
    replies.push(allowed);
    assert_eq!(upstream.requests().len(), 1);

    for origin in refused_origins {
        let reply = post_from(Some(origin));
        assert_openai_error(
            &reply,
            403,
            "permission_error",
            &format!("POST from {origin}"),
        );
        assert!(
            reply.header("access-control-allow-origin").is_none(),
            "{reply:?}"
        );
        replies.push(reply);
    }
    // Two Origin headers are refused too.
    let doubled = send(
        "POST",
        &url,
        &[
            ("content-type", "application/json"),
            ("authorization", &auth),
            ("origin", "https://app.example.com"),
            ("origin", "https://evil.example"),
        ],
        &chat_body("chat"),
    );
    assert_eq!(doubled.status, 403, "{doubled:?}");
    replies.push(doubled);
    assert_eq!(
        upstream.requests().len(),
        1,
        "a refused origin reached the upstream"
    );
    // Not a browser (no Origin): served, without CORS headers.
    let plain = post_from(None);
    assert_eq!(plain.status, 200, "{plain:?}");
    assert!(
        plain.header("access-control-allow-origin").is_none(),
        "{plain:?}"
    );
    replies.push(plain);

    for reply in &replies {
        assert!(
            reply.header("access-control-allow-credentials").is_none(),
            "credentials allowed: {reply:?}"
        );
    }
    // A refused origin is not a failed authentication.
    assert!(
        lines_with(&krouter, AUTH_FAILED).is_empty(),
        "{}",
        krouter.log()
    );
}

/// With no `cors_origins` (the default) every browser origin is refused, preflight or not.
#[test]
fn by_default_every_browser_origin_is_refused() {
    let (home, upstream) = edge_home("", "");
    let (_, valid) = create_key(&home, "valid", &[]);
    let krouter = Krouter::spawn(&home, &[]);
    let url = krouter.url("/v1/chat/completions");
    let auth = format!("Bearer {valid}");

    for origin in ["https://app.example.com", "http://localhost:5173", "null"] {
        let preflight = send(
            "OPTIONS",
            &url,
            &[
                ("origin", origin),
                ("access-control-request-method", "POST"),
            ],
            "",
        );
        assert_eq!(
            preflight.status, 403,
            "preflight from {origin}: {preflight:?}"
        );
        let post = send(
            "POST",
            &url,
            &[
                ("content-type", "application/json"),
                ("authorization", &auth),
                ("origin", origin),
            ],
            &chat_body("chat"),
        );
        assert_eq!(post.status, 403, "POST from {origin}: {post:?}");
        for reply in [&preflight, &post] {
            assert!(
                reply.header("access-control-allow-origin").is_none(),
                "{reply:?}"
            );
            assert!(
                reply.header("access-control-allow-credentials").is_none(),
                "{reply:?}"
            );
        }
    }
    assert!(
        upstream.requests().is_empty(),
        "a browser request reached the upstream"
    );
    assert_eq!(
        chat_as(&krouter, Some(&valid), None).status,
        200,
        "not a browser"
    );
}

/// A locked address's 429 carries the CORS headers when the page's origin is allowed, so a
/// browser client can read it and its `Retry-After`; a refused origin gets none (the lock is
/// still answered first).
#[test]
fn a_lockout_429_is_readable_by_an_allowed_origin_only() {
    let access = "cors_origins = [\"https://app.example.com\"]";
    let lockout = "[access.lockout]\nmax_failures = 2\nwindow_secs = 600\nlockout_secs = 600\n\n";
    let (home, upstream) = edge_home(access, lockout);
    let (_, valid) = create_key(&home, "valid", &[]);
    let krouter = Krouter::spawn(&home, &[]);
    let url = krouter.url("/v1/chat/completions");
    let allowed = "https://app.example.com";
    let post = |origin: &str, key: &str| {
        let auth = format!("Bearer {key}");
        send(
            "POST",
            &url,
            &[
                ("content-type", "application/json"),
                ("authorization", &auth),
                ("origin", origin),
            ],
            &chat_body("chat"),
        )
    };
    let wrong = bad_checksum(&valid);
    assert_eq!(post(allowed, &wrong).status, 401, "failure 1");
    let locking = post(allowed, &wrong);
    assert_openai_429(&locking, 600, "the failure that locks");
    let locked = post(allowed, &valid);
    assert_openai_429(&locked, 600, "locked, valid key, allowed origin");
    for reply in [&locking, &locked] {
        assert_eq!(
            reply.header("access-control-allow-origin"),
            Some(allowed),
            "{reply:?}"
        );
        let exposed = reply
            .header("access-control-expose-headers")
            .unwrap_or_default();
        assert!(exposed.contains("retry-after"), "{reply:?}");
        assert!(
            reply.header("access-control-allow-credentials").is_none(),
            "{reply:?}"
        );
    }
    let refused = post("https://evil.example", &valid);
    assert_openai_429(&refused, 600, "locked, refused origin");
    assert!(
        refused.header("access-control-allow-origin").is_none(),
        "{refused:?}"
    );
    assert!(
        upstream.requests().is_empty(),
        "a locked request went upstream"
    );
}

// === log lines ===

/// A client cannot forge a log line: a model name carrying CR/LF and a JSON line of its own
/// (and other control characters) stays inside its field, escaped; every line the proxy
/// wrote is one JSON object, and no forged line appears.
#[test]
fn client_input_cannot_forge_log_lines() {
    let (home, _upstream) = edge_home("", "");
    let (_, valid) = create_key(&home, "valid", &[]);
    let krouter = Krouter::spawn(&home, &[]);

    let forged = "\",\"level\":\"ERROR\",\"message\":\"forged\"}";
    let models = [
        "x\r\n{\"timestamp\":\"2020-01-01T00:00:00Z\",\"level\":\"ERROR\",\"message\":\"forged-crlf\"}"
            .to_owned(),
        format!("y{forged}\n{{\"level\":\"ERROR\",\"message\":\"forged-quote\"}}"),
        "z\u{1b}[2J\u{7}\u{0}\u{2028}forged-control\r".to_owned(),
    ];
    let mut ids = Vec::new();
    for model in &models {
        let reply = send(
            "POST",
            &krouter.url("/v1/chat/completions"),
            &[
                ("content-type", "application/json"),
                ("authorization", &format!("Bearer {valid}")),
            ],
            &chat_body(model),
        );
        assert_eq!(reply.status, 404, "unknown model: {reply:?}");
        ids.push(
            reply
                .header("x-request-id")
                .expect("a request id")
                .to_owned(),
        );
    }
    // The request lines are written when the responses end.
    let lines = wait_for_lines(&krouter, "request", models.len());
    for (model, id) in models.iter().zip(&ids) {
        let line = lines
            .iter()
            .find(|l| l["request_id"] == id.as_str())
            .unwrap_or_else(|| panic!("no request line for {id}:\n{}", krouter.log()));
        assert_eq!(line["model"].as_str(), Some(model.as_str()), "{line}");
    }
    // Every line parsed as one object (log_lines); none is a forged one.
    let all = log_lines(&krouter);
    for line in &all {
        assert_ne!(line["level"], "ERROR", "a forged line: {line}");
        let message = line["message"].as_str().unwrap_or_default();
        assert!(!message.starts_with("forged"), "a forged line: {line}");
    }
    let log = krouter.log();
    for marker in ["forged-crlf", "forged-quote", "forged-control"] {
        assert_eq!(
            log.lines().filter(|l| l.contains(marker)).count(),
            1,
            "{marker} must appear on exactly one line (its request line):\n{log}"
        );
    }
    assert!(
        !log.contains('\r') && !log.contains('\u{1b}'),
        "raw control characters:\n{log:?}"
    );
}

// === connections per address ===

/// Opens a connection and starts a request head on it without finishing it: it holds a
/// connection slot (until the head read time) and nothing is answered.
fn hold(krouter: &Krouter) -> Raw {
    let mut raw = Raw::connect(krouter.addr);
    assert!(raw.send(b"GET /healthz HTTP/1.1\r\n"));
    raw
}

/// `GET /healthz` on a fresh connection: its status, or `None` for a close without one.
fn health_on_new_connection(krouter: &Krouter) -> Option<u16> {
    let mut raw = Raw::connect(krouter.addr);
    if !raw.send(b"GET /healthz HTTP/1.1\r\nHost: krouter\r\n\r\n") {
        return None;
    }
    match raw.response(DEADLINE) {
        Outcome::Response(response) => {
            if response.status == 503 {
                assert_eq!(response.header("connection"), Some("close"), "{response:?}");
                assert!(
                    raw.closed_within(DEADLINE),
                    "a refused connection stayed open"
                );
            }
            Some(response.status)
        }
        Outcome::Closed => None,
        Outcome::Silent => panic!("neither answered nor closed"),
    }
}

/// One address (here 127.0.0.1) gets `max_connections_per_address` connections and a bare
/// 503 beyond them, logged sparingly with the address; a connection that ends gives its
/// slot back.
#[test]
fn one_address_gets_its_share_of_connections_and_no_more() {
    let (home, _upstream) = edge_home("", "[limits]\nmax_connections_per_address = 3\n");
    let krouter = Krouter::spawn(&home, &[]);
    let mut holders: Vec<Raw> = (0..3).map(|_| hold(&krouter)).collect();
    // The slots are taken when krouter accepts: give it a moment to accept all three.
    std::thread::sleep(Duration::from_millis(500));
    for attempt in 0..5 {
        let status = health_on_new_connection(&krouter);
        assert!(
            matches!(status, Some(503) | None),
            "attempt {attempt}: {status:?}"
        );
    }
    let refused = scrape(&krouter);
    assert_eq!(
        value(
            &refused,
            "krouter_connections_refused_total{reason=\"max_connections_per_address\"}"
        ),
        5.0
    );
    assert!(
        !refused.contains_key("krouter_connections_refused_total{reason=\"max_connections\"}"),
        "{refused:#?}"
    );
    let lines = wait_for_lines(&krouter, PER_ADDRESS_CAP, 1);
    assert_eq!(lines[0]["max_connections_per_address"], 3, "{}", lines[0]);
    assert_eq!(lines[0]["last_client"], "127.0.0.1", "{}", lines[0]);
    // The total cap (1,024) was never the reason.
    assert!(
        !krouter.log().contains("connection limit reached"),
        "{}",
        krouter.log()
    );
    // One holder leaves: its slot serves a new connection.
    drop(holders.pop());
    let started = Instant::now();
    while health_on_new_connection(&krouter) != Some(200) {
        assert!(
            started.elapsed() < DEADLINE,
            "a freed slot was never given back"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(holders);
}

/// A trusted proxy's connections carry many clients: the per-address cap does not count
/// them (only `max_connections` does).
#[test]
fn a_trusted_proxy_is_not_held_to_the_per_address_cap() {
    let (home, _upstream) = edge_home(
        "trusted_proxies = [\"127.0.0.1\"]",
        "[limits]\nmax_connections_per_address = 2\n",
    );
    let krouter = Krouter::spawn(&home, &[]);
    let holders: Vec<Raw> = (0..4).map(|_| hold(&krouter)).collect();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(health_on_new_connection(&krouter), Some(200));
    assert!(
        !krouter.log().contains(PER_ADDRESS_CAP),
        "{}",
        krouter.log()
    );
    drop(holders);
}
