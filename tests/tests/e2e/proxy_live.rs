//! The proxy changing without a restart: keys revoked, rotated and created,
//! credentials set and removed, policies swapped or refused while `krouter` serves; a request
//! in flight keeping the snapshot it started with; a graceful shutdown draining a stream; and
//! the request metadata rows in `state/state.sqlite`.
//!
//! The design figure for a change to reach the proxy is one second (DESIGN.md §1; the watcher
//! looks every 100 ms). The polls below allow [`DEADLINE`] so that a loaded two-core machine
//! does not flake; a watcher that never fires still fails them.

use std::collections::HashMap;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use krouter_policy::PolicyDigest;
use krouter_tests::client::{Reply, post, send};
use krouter_tests::eventually;
use krouter_tests::home::{TempHome, json_field};
use krouter_tests::krouter::{Krouter, policy};
use krouter_tests::leak::{assert_absent, assert_absent_from_files, fake_secret};
use krouter_tests::raw::{Raw, h2};
use krouter_tests::upstream::MockUpstream;
use rusqlite::{Connection, OpenFlags};

/// How long a live change may take to show in these tests (the design says one second).
const DEADLINE: Duration = Duration::from_secs(3);
/// The serial of the policy every test starts with (`init` wrote serial 1).
const FIRST_SERIAL: u64 = 2;

/// A running `krouter` over a fresh home whose provider `mock` is a mock upstream that
/// demands `credential`. Fields drop in order: the proxy first, the home last.
struct Running {
    krouter: Krouter,
    upstream: MockUpstream,
    credential: String,
    home: TempHome,
}

/// A fresh home whose policy (serial [`FIRST_SERIAL`]) has group `default` plus the TOML in
/// `groups`, and routes each `(model, upstream model)` of `routes` to a mock upstream that
/// demands a credential, stored as `mock`. Returns the home, the mock and the credential.
fn home_with_mock(groups: &str, routes: &[(&str, &str)]) -> (TempHome, MockUpstream, String) {
    let home = TempHome::init();
    let credential = fake_secret("sk-upstream-", 32);
    let upstream = MockUpstream::builder()
        .credential(Some(credential.clone()))
        .start();
    home.set_credential("mock", "openai-compatible", &credential);
    home.write_policy(&mock_policy(FIRST_SERIAL, &upstream, groups, routes));
    (home, upstream, credential)
}

/// Policy text: `groups` (extra `[[access.groups]]`), provider `mock` for `upstream` with
/// credential `mock`, and one route per `(model, upstream model)`.
fn mock_policy(
    serial: u64,
    upstream: &MockUpstream,
    groups: &str,
    routes: &[(&str, &str)],
) -> String {
    policy(
        serial,
        &format!(
            "{groups}{}{}",
            provider("mock", upstream, "mock"),
            routes_toml("mock", routes)
        ),
    )
}

/// A `[[providers]]` table.
fn provider(name: &str, upstream: &MockUpstream, credential: &str) -> String {
    format!(
        "[[providers]]\nname = \"{name}\"\nkind = \"openai-compatible\"\nbase_url = \"{}\"\ncredential = \"{credential}\"\n\n",
        upstream.base_url()
    )
}

/// One `[[routes]]` table per `(model, upstream model)`, all to `provider`.
fn routes_toml(provider: &str, routes: &[(&str, &str)]) -> String {
    routes
        .iter()
        .map(|(model, upstream_model)| {
            format!(
                "[[routes]]\nmodel = \"{model}\"\ntargets = [\"{provider}:{upstream_model}\"]\n\n"
            )
        })
        .collect()
}

/// A chat completion request body for `model` saying `prompt`.
fn chat_body(model: &str, prompt: &str, stream: bool) -> String {
    let mut body = serde_json::json!({
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
    });
    if stream {
        body["stream"] = true.into();
        body["stream_options"] = serde_json::json!({"include_usage": true});
    }
    body.to_string()
}

/// Replaces `path` with `text` through a rename, so that no reader sees half a file.
fn replace_file(path: &Path, text: &str) {
    let staging = path.with_extension("staging");
    std::fs::write(&staging, text).expect("staging file written");
    std::fs::rename(&staging, path).expect("staging file renamed into place");
}

/// Now, in unix milliseconds.
fn unix_ms() -> i64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970");
    i64::try_from(since.as_millis()).expect("a representable time")
}

/// `state/state.sqlite`, opened read-only as a report would.
fn state_db(home: &TempHome) -> Connection {
    Connection::open_with_flags(
        home.root.join("state/state.sqlite"),
        OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("the state database opens read-only")
}

// === impl Running ===

impl Running {
    /// A proxy serving `routes` to group `default` and the extra `groups`, with a key made
    /// before it started for each `(label, group)` of `keys`; returns the keys' ids and keys.
    fn start(
        groups: &str,
        routes: &[(&str, &str)],
        keys: &[(&str, &str)],
    ) -> (Self, Vec<(String, String)>) {
        let (home, upstream, credential) = home_with_mock(groups, routes);
        let keys = keys
            .iter()
            .map(|(label, group)| create_key(&home, label, group))
            .collect();
        (Self::spawn(home, upstream, credential), keys)
    }

    /// Starts `krouter` over a prepared home.
    fn spawn(home: TempHome, upstream: MockUpstream, credential: String) -> Self {
        let krouter = Krouter::spawn(&home, &[]);
        Self {
            krouter,
            upstream,
            credential,
            home,
        }
    }

    /// `POST /v1/chat/completions` for `model` with `key`.
    fn chat(&self, key: &str, model: &str) -> Reply {
        post(
            &self.krouter.url("/v1/chat/completions"),
            Some(key),
            &chat_body(model, "hi", false),
        )
    }

    /// The policy serial `/healthz` reports.
    fn serial_in_force(&self) -> u64 {
        let reply = send("GET", &self.krouter.url("/healthz"), &[], "");
        assert_eq!(reply.status, 200, "{reply:?}");
        reply.json()["policy_serial"]
            .as_u64()
            .expect("a numeric serial")
    }

    /// Where the log ends now: lines after it are what a change caused.
    fn mark(&self) -> usize {
        self.krouter.log().len()
    }

    /// The first log line after `mark` holding every one of `needles`; panics after
    /// [`DEADLINE`].
    fn wait_for_line(&self, mark: usize, needles: &[&str]) -> String {
        // The probe's error is the log since `mark`, shown if the line never comes.
        let found = eventually(
            DEADLINE,
            &format!("a log line with {needles:?}"),
            || {
                let log = self.krouter.log();
                log[mark..]
                    .lines()
                    .find(|line| needles.iter().all(|n| line.contains(n)))
                    .map(str::to_owned)
                    .ok_or_else(|| log[mark..].to_owned())
            },
            Result::is_ok,
        );
        found.unwrap_or_default()
    }

    /// How many log lines after `mark` hold every one of `needles`.
    fn count_lines(&self, mark: usize, needles: &[&str]) -> usize {
        self.krouter.log()[mark..]
            .lines()
            .filter(|line| needles.iter().all(|n| line.contains(n)))
            .count()
    }

    /// Runs `admin` (a store change) and waits until the proxy has applied it.
    fn store_change(&self, args: &[&str], stdin: Option<&[u8]>) -> String {
        let mark = self.mark();
        let run = match stdin {
            Some(stdin) => self.home.admin_stdin(args, stdin),
            None => self.home.admin(args),
        };
        assert_eq!(run.code, 0, "{args:?}: {run:?}");
        self.wait_for_line(mark, &["store change applied"]);
        run.stdout
    }

    /// Waits until the watcher has run at least one whole look after this call: two store
    /// changes, each applied in its own look, bracket a full one.
    fn watcher_barrier(&self) {
        for n in 0..2 {
            let value = fake_secret("barrier-", 24);
            self.store_change(
                &["credentials", "set", &format!("barrier-{n}")],
                Some(value.as_bytes()),
            );
        }
    }

    /// Writes and signs (with the home's key) `text` as the policy, and waits until the proxy
    /// applied `serial`.
    fn swap_policy(&self, serial: u64, text: &str) -> String {
        let mark = self.mark();
        self.home.write_policy(text);
        self.wait_for_line(mark, &["policy applied", &format!("\"serial\":{serial}")])
    }
}

/// The id and key printed by `keys create --json` or `keys rotate --json`.
fn id_and_secret(stdout: &str) -> (String, String) {
    (json_field(stdout, "id"), json_field(stdout, "secret"))
}

/// Creates a key `label` in `group`; returns its id and the key.
fn create_key(home: &TempHome, label: &str, group: &str) -> (String, String) {
    let run = home.admin(&[
        "--json", "keys", "create", "--label", label, "--group", group,
    ]);
    assert_eq!(run.code, 0, "{run:?}");
    id_and_secret(&run.stdout)
}

/// The one route most tests serve.
const CHAT: &[(&str, &str)] = &[("chat", "real-model")];
/// `CHAT` and a second route.
const CHAT_AND_SECOND: &[(&str, &str)] = &[("chat", "real-model"), ("second", "second-model")];
/// One key in group `default`.
const APP: &[(&str, &str)] = &[("app", "default")];

// === keys ===

#[test]
fn a_key_revoked_while_running_is_refused_within_a_second_and_others_keep_working() {
    let (live, keys) = Running::start("", CHAT, &[("doomed", "default"), ("other", "default")]);
    let [(doomed_id, doomed), (_, other)] = &keys[..] else {
        unreachable!()
    };
    assert_eq!(live.chat(doomed, "chat").status, 200);
    assert_eq!(live.chat(other, "chat").status, 200);

    let run = live.home.admin(&["keys", "revoke", doomed_id]);
    assert_eq!(run.code, 0, "{run:?}");
    // Design: refused within one second of the revoke (DEADLINE allows three). The poll
    // ends at the first refusal, so it costs one failed attempt against the address.
    let refused = eventually(
        DEADLINE,
        "the revoked key refused",
        || live.chat(doomed, "chat"),
        |r| r.status != 200,
    );
    assert_eq!(refused.status, 401, "{refused:?}");
    assert!(refused.body.contains("revoked"), "{refused:?}");
    assert_eq!(live.chat(other, "chat").status, 200);
}

#[test]
fn readyz_answers_503_while_the_store_cannot_be_read_and_200_once_it_can_again() {
    let (live, keys) = Running::start("", CHAT, &[("app", "default")]);
    let [(_, key)] = &keys[..] else {
        unreachable!()
    };
    let ready = || send("GET", &live.krouter.url("/readyz"), &[], "");
    assert_eq!(ready().status, 200);

    // The store put aside, and a file that is no database renamed into its place.
    let store = live.home.store();
    let aside = store.with_extension("aside");
    let broken = store.with_extension("broken");
    std::fs::rename(&store, &aside).unwrap();
    std::fs::write(&broken, b"this is not an SQLite database, nowhere near").unwrap();
    std::fs::rename(&broken, &store).unwrap();
    let down = eventually(DEADLINE, "/readyz 503", &ready, |r| r.status == 503);
    assert_eq!(down.json()["status"], "store unreadable", "{down:?}");
    live.krouter.wait_for_log(
        "cannot read the store; serving with the last good keys",
        DEADLINE,
    );
    // Alive all along, and serving with the keys and credentials it last read.
    let health = send("GET", &live.krouter.url("/healthz"), &[], "");
    assert_eq!(health.status, 200, "{health:?}");
    assert_eq!(live.chat(key, "chat").status, 200);

    std::fs::rename(&aside, &store).unwrap();
    eventually(DEADLINE, "/readyz 200 again", &ready, |r| r.status == 200);
    assert_eq!(live.chat(key, "chat").status, 200);
}

#[test]
fn a_rotated_key_gives_way_to_its_successor_after_the_grace_period() {
    let (live, keys) = Running::start("", CHAT, APP);
    let (first_id, first) = &keys[0];

    // The default grace (24 h): both keys work.
    let out = live.store_change(&["--json", "keys", "rotate", first_id], None);
    let (second_id, second) = id_and_secret(&out);
    assert_ne!(&second_id, first_id);
    assert!(out.contains(first_id.as_str()), "names the old key: {out}");
    let reply = eventually(
        DEADLINE,
        "the successor key accepted",
        || live.chat(&second, "chat"),
        |r| r.status == 200,
    );
    assert_eq!(reply.status, 200);
    assert_eq!(live.chat(first, "chat").status, 200, "inside its grace");

    // No grace: the old key stops at once, the new one works.
    let out = live.store_change(
        &["--json", "keys", "rotate", &second_id, "--grace", "0s"],
        None,
    );
    let (_, third) = id_and_secret(&out);
    let refused = eventually(
        DEADLINE,
        "the rotated key refused",
        || live.chat(&second, "chat"),
        |r| r.status != 200,
    );
    assert_eq!(refused.status, 401, "{refused:?}");
    assert!(refused.body.contains("expired"), "{refused:?}");
    assert_eq!(live.chat(&third, "chat").status, 200);
    assert_eq!(
        live.chat(first, "chat").status,
        200,
        "still inside its grace"
    );
}

#[test]
fn a_key_created_while_running_works_within_a_second() {
    let (live, _) = Running::start("", CHAT, &[]);
    // Waiting for the log line rather than probing with the unknown key: each refusal
    // would count as a failed attempt against the address once lockout arrives. Design:
    // one second; `store_change` allows DEADLINE.
    let out = live.store_change(&["--json", "keys", "create", "--label", "late"], None);
    let (_, key) = id_and_secret(&out);
    let reply = eventually(
        DEADLINE,
        "the new key accepted",
        || live.chat(&key, "chat"),
        |r| r.status == 200,
    );
    assert_eq!(reply.json()["usage"]["completion_tokens"], 7);
}

// === credentials ===

#[test]
fn a_credential_set_or_removed_while_running_takes_effect_within_a_second() {
    let (home, upstream, right) = home_with_mock("", CHAT);
    let wrong = fake_secret("sk-stale-", 32);
    home.set_credential("mock", "openai-compatible", &wrong);
    let (_, key) = create_key(&home, "app", "default");
    let live = Running::spawn(home, upstream, right.clone());

    // The upstream refuses krouter's credential with 401. The client's key was fine, so
    // krouter answers 502 in its own words and does not relay the upstream's body.
    let reply = live.chat(&key, "chat");
    assert_eq!(reply.status, 502, "{reply:?}");
    assert!(
        reply.body.contains("refused krouter's credential"),
        "{reply:?}"
    );
    assert!(
        !reply.body.contains("invalid or missing credential"),
        "{reply:?}"
    );
    assert!(reply.header("x-request-id").is_some(), "{reply:?}");
    assert_eq!(
        live.upstream.requests()[0].header("authorization"),
        Some(format!("Bearer {wrong}").as_str())
    );

    live.store_change(
        &["credentials", "set", "mock", "--kind", "openai-compatible"],
        Some(right.as_bytes()),
    );
    let reply = eventually(
        DEADLINE,
        "the new credential used",
        || live.chat(&key, "chat"),
        |r| r.status == 200,
    );
    assert_eq!(reply.status, 200);
    let last = live.upstream.requests().pop().expect("a request upstream");
    assert_eq!(
        last.header("authorization"),
        Some(format!("Bearer {right}").as_str())
    );

    // `credentials remove` does not look at the policy: it removes a credential the policy
    // in force names; the proxy warns, and answers 502 until it is set again.
    let mark = live.mark();
    let run = live.home.admin(&["credentials", "remove", "mock"]);
    assert_eq!(run.code, 0, "{run:?}");
    live.wait_for_line(
        mark,
        &[
            "the policy names a credential the store no longer has",
            "\"credential\":\"mock\"",
        ],
    );
    let reply = eventually(
        DEADLINE,
        "the removed credential missed",
        || live.chat(&key, "chat"),
        |r| r.status != 200,
    );
    assert_eq!(reply.status, 502, "{reply:?}");
    assert!(reply.body.contains("no usable credential"), "{reply:?}");
    let seen = live.upstream.requests().len();
    assert_eq!(live.chat(&key, "chat").status, 502);
    assert_eq!(
        live.upstream.requests().len(),
        seen,
        "nothing goes upstream without a credential"
    );

    let (status, log) = live.krouter.stop();
    assert!(status.success(), "{log}");
    assert_absent(&log, &[&key, &right, &wrong], "the krouter log");
}

// === policy swaps ===

#[test]
fn a_new_signed_policy_is_applied_within_a_second_and_recorded() {
    let (live, keys) = Running::start("", CHAT, APP);
    let key = &keys[0].1;
    let before = live.chat(key, "second");
    assert_eq!(before.status, 404, "{before:?}");
    assert_eq!(live.serial_in_force(), FIRST_SERIAL);

    let text = mock_policy(FIRST_SERIAL + 1, &live.upstream, "", CHAT_AND_SECOND);
    // Design: applied within one second of the new files; `swap_policy` allows DEADLINE.
    let line = live.swap_policy(FIRST_SERIAL + 1, &text);
    assert!(
        line.contains(&format!("\"previous_serial\":{FIRST_SERIAL}")),
        "{line}"
    );
    let reply = eventually(
        DEADLINE,
        "the new route served",
        || live.chat(key, "second"),
        |r| r.status == 200,
    );
    assert_eq!(reply.json()["model"], "second-model");
    assert_eq!(live.chat(key, "chat").status, 200);
    assert_eq!(live.serial_in_force(), FIRST_SERIAL + 1);

    let (serial, digest): (i64, Vec<u8>) = state_db(&live.home)
        .query_row("SELECT serial, digest FROM accepted_policy", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .expect("an accepted policy row");
    assert_eq!(serial, i64::try_from(FIRST_SERIAL + 1).unwrap());
    assert_eq!(
        digest,
        PolicyDigest::of(text.as_bytes()).as_bytes().to_vec()
    );
}

/// A bad policy file while running: the proxy logs why, once, and keeps serving the last
/// good one; a properly signed later serial afterwards is applied. `break_it` gets the
/// running proxy and a widened policy (serial + 1, route `second` added) to use if it likes.
fn a_refused_policy_keeps_the_last_good_one(break_it: impl FnOnce(&Running, &str), reason: &str) {
    let (live, keys) = Running::start("", CHAT, APP);
    let key = &keys[0].1;
    assert_eq!(live.chat(key, "chat").status, 200);
    assert_eq!(live.chat(key, "second").status, 404);

    let widened = mock_policy(FIRST_SERIAL + 1, &live.upstream, "", CHAT_AND_SECOND);
    let mark = live.mark();
    break_it(&live, &widened);
    let line = live.wait_for_line(mark, &["new policy refused", reason]);
    assert!(line.contains("\"level\":\"WARN\""), "{line}");
    assert!(
        line.contains(&format!("\"serial_in_force\":{FIRST_SERIAL}")),
        "{line}"
    );
    assert_eq!(live.chat(key, "chat").status, 200, "the old policy serves");
    assert_eq!(
        live.chat(key, "second").status,
        404,
        "the new route is not in"
    );
    assert_eq!(live.serial_in_force(), FIRST_SERIAL);

    // Logged once per version of the files, not on every look of the watcher.
    live.watcher_barrier();
    assert_eq!(
        live.count_lines(mark, &["new policy refused", reason]),
        1,
        "{}",
        live.krouter.log()
    );

    let fixed = mock_policy(FIRST_SERIAL + 2, &live.upstream, "", CHAT_AND_SECOND);
    live.swap_policy(FIRST_SERIAL + 2, &fixed);
    let reply = eventually(
        DEADLINE,
        "the fixed policy's route served",
        || live.chat(key, "second"),
        |r| r.status == 200,
    );
    assert_eq!(reply.status, 200);
    assert_eq!(live.serial_in_force(), FIRST_SERIAL + 2);
}

#[test]
fn a_policy_changed_without_re_signing_is_refused_while_running() {
    a_refused_policy_keeps_the_last_good_one(
        |live, widened| replace_file(&live.home.root.join("policy/policy.toml"), widened),
        "was changed after it was signed",
    );
}

#[test]
fn a_policy_signed_by_an_untrusted_key_is_refused_while_running() {
    a_refused_policy_keeps_the_last_good_one(
        |live, widened| {
            let rogue = live.home.parent().join("rogue-keys");
            let run = live.home.admin(&[
                "policy",
                "keygen",
                "--out",
                rogue.to_str().expect("UTF-8 path"),
            ]);
            assert_eq!(run.code, 0, "{run:?}");
            let policy = live.home.root.join("policy/policy.toml");
            replace_file(&policy, widened);
            let run = live.home.admin(&[
                "policy",
                "sign",
                "--key",
                rogue
                    .join("policy-signing.key")
                    .to_str()
                    .expect("UTF-8 path"),
                policy.to_str().expect("UTF-8 path"),
            ]);
            assert_eq!(run.code, 0, "{run:?}");
        },
        "which is not trusted",
    );
}

#[test]
fn a_policy_whose_signature_is_removed_is_refused_while_running() {
    a_refused_policy_keeps_the_last_good_one(
        |live, _| {
            std::fs::remove_file(live.home.root.join("policy/policy.toml.sig"))
                .expect("the signature removed");
        },
        "the policy is not signed",
    );
}

#[test]
fn a_validly_signed_rollback_is_refused_while_running() {
    a_refused_policy_keeps_the_last_good_one(
        |live, _| {
            let older = mock_policy(FIRST_SERIAL - 1, &live.upstream, "", CHAT_AND_SECOND);
            live.home.write_policy(&older);
        },
        "refusing a rollback",
    );
}

#[test]
fn a_reused_serial_with_other_contents_is_refused_while_running() {
    a_refused_policy_keeps_the_last_good_one(
        |live, _| {
            let same = mock_policy(FIRST_SERIAL, &live.upstream, "", CHAT_AND_SECOND);
            live.home.write_policy(&same);
        },
        "was already accepted with different contents",
    );
}

/// `policy sign` refuses an invalid file (an unknown field, say), and an unknown field
/// written after signing is a tampered file, covered above. What the signer cannot see is
/// the store: a provider naming a credential the store does not hold is valid to the signer
/// and invalid to the proxy.
#[test]
fn a_signed_policy_the_store_cannot_satisfy_is_refused_while_running() {
    a_refused_policy_keeps_the_last_good_one(
        |live, _| {
            let dangling = policy(
                FIRST_SERIAL + 1,
                &format!(
                    "{}{}",
                    provider("mock", &live.upstream, "absent"),
                    routes_toml("mock", CHAT_AND_SECOND)
                ),
            );
            live.home.write_policy(&dangling);
        },
        "no stored credential named `absent`",
    );
}

/// The refusal's `reason` lists every validation problem, each once.
#[test]
fn a_refused_policy_names_each_problem_once() {
    let (live, _) = Running::start("", CHAT, &[]);
    let mark = live.mark();
    let dangling = policy(
        FIRST_SERIAL + 1,
        &format!(
            "{}{}{}{}",
            provider("mock", &live.upstream, "absent-one"),
            provider("spare", &live.upstream, "absent-two"),
            routes_toml("mock", CHAT),
            routes_toml("spare", &[("spare", "spare-model")])
        ),
    );
    live.home.write_policy(&dangling);
    let line = live.wait_for_line(mark, &["new policy refused", "absent-one"]);
    for name in ["`absent-one`", "`absent-two`"] {
        assert_eq!(line.matches(name).count(), 1, "{name}: {line}");
    }
}

#[test]
fn a_request_in_flight_keeps_the_policy_it_started_with() {
    let (live, keys) = Running::start("", &[("chat", "real-model"), ("slow", "slow-1500")], APP);
    let key = keys[0].1.clone();
    let url = live.krouter.url("/v1/chat/completions");
    let slow: JoinHandle<Reply> = {
        let key = key.clone();
        std::thread::spawn(move || post(&url, Some(&key), &chat_body("slow", "hi", false)))
    };
    eventually(
        DEADLINE,
        "the slow request upstream",
        || live.upstream.requests().len(),
        |n| *n == 1,
    );

    // The new policy drops the route and the provider the slow request is using.
    let text = policy(
        FIRST_SERIAL + 1,
        &format!(
            "{}{}",
            provider("other", &live.upstream, "mock"),
            routes_toml("other", CHAT)
        ),
    );
    live.swap_policy(FIRST_SERIAL + 1, &text);
    assert!(
        !slow.is_finished(),
        "the slow request ended before the swap; this machine is too slow for the test"
    );
    let gone = live.chat(&key, "slow");
    assert_eq!(gone.status, 404, "{gone:?}");

    let reply = slow.join().expect("the slow request thread");
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.json()["model"], "slow-1500");
    assert_eq!(live.chat(&key, "chat").status, 200);
}

// === shutdown ===

#[test]
fn sigterm_drains_a_stream_in_flight_refuses_new_connections_and_exits_0() {
    let (live, keys) = Running::start("", &[("stream", "stream-gap-200")], APP);
    let Running {
        krouter,
        upstream,
        home,
        ..
    } = live;
    let key = keys[0].1.clone();
    let addr: SocketAddr = krouter.addr;
    let url = krouter.url("/v1/chat/completions");
    let stream: JoinHandle<Reply> =
        std::thread::spawn(move || post(&url, Some(&key), &chat_body("stream", "hi", true)));
    eventually(
        DEADLINE,
        "the stream upstream",
        || upstream.requests().len(),
        |n| *n == 1,
    );

    let stopping = std::thread::spawn(move || krouter.stop());
    // The listener closes at the signal, while the stream (8 events 200 ms apart) goes on.
    let _refused = eventually(
        DEADLINE,
        "new connections refused",
        || TcpStream::connect_timeout(&addr, Duration::from_millis(200)).map_err(|e| e.kind()),
        |c| c.as_ref().err() == Some(&std::io::ErrorKind::ConnectionRefused),
    );
    assert!(
        !stream.is_finished(),
        "the stream ended before the listener closed; this machine is too slow for the test"
    );

    let reply = stream.join().expect("the stream thread");
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(reply.body.ends_with("data: [DONE]\n\n"), "{reply:?}");
    assert!(reply.chunk_times.len() > 1, "{reply:?}");
    let (status, log) = stopping.join().expect("the stop thread");
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(log.contains("shutting down"), "{log}");
    assert!(log.contains("\"metadata_rows_dropped\":0"), "{log}");

    // The streamed request's row was written before the exit.
    let request_id = reply.header("x-request-id").expect("a request id");
    let tokens: (i64, i64) = state_db(&home)
        .query_row(
            "SELECT tokens_in, tokens_out FROM requests WHERE request_id = ?1",
            [request_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .expect("the stream's row");
    assert_eq!(tokens, (11, 7));
}

/// A request still waiting for its upstream when the grace period ends is cut, and still
/// logged and recorded (as 499) before the metadata writer stops. Takes the whole grace
/// period (25 s).
#[test]
fn a_request_cut_at_the_end_of_the_grace_period_is_logged_and_recorded() {
    let (live, keys) = Running::start("", &[("hang", "hang")], APP);
    let Running {
        krouter,
        upstream,
        home,
        ..
    } = live;
    let mut waiting = TcpStream::connect(krouter.addr).expect("connect");
    send_chat(&mut waiting, &keys[0].1, "hang");
    eventually(
        DEADLINE,
        "the request at the upstream",
        || upstream.requests().len(),
        |n| *n == 1,
    );
    let (status, log) = krouter.stop();
    assert_eq!(status.code(), Some(0), "{log}");
    let cut = log
        .find("requests still in flight after the grace period were cut")
        .unwrap_or_else(|| panic!("no cut warning:\n{log}"));
    let line = log
        .lines()
        .find(|line| line.contains(r#""message":"request""#))
        .unwrap_or_else(|| panic!("no request line:\n{log}"));
    assert!(line.contains(r#""status":499"#), "{line}");
    assert!(line.contains(r#""model":"hang""#), "{line}");
    let logged = log.find(line).unwrap_or_default();
    let stopped = log.find(r#""message":"stopped""#).unwrap_or_default();
    assert!(cut < logged && logged < stopped, "{log}");
    assert!(log.contains(r#""metadata_rows_dropped":0"#), "{log}");
    let rows: i64 = state_db(&home)
        .query_row(
            "SELECT count(*) FROM requests WHERE status = 499 AND model = 'hang'",
            [],
            |r| r.get(0),
        )
        .expect("the requests table");
    assert_eq!(rows, 1);
    // The client saw its connection close without an answer.
    let mut answer = Vec::new();
    waiting
        .set_read_timeout(Some(DEADLINE))
        .expect("a read timeout");
    let _ = waiting.read_to_end(&mut answer);
    assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));
}

/// A connection accepted just before shutdown that sends its request a moment later is
/// still answered: a connection gets a moment to begin its first request, and the drain
/// waits for connections, not only for requests already in flight.
#[test]
fn a_request_sent_just_after_shutdown_begins_on_an_open_connection_is_answered() {
    let (live, keys) = Running::start("", CHAT, APP);
    let mut early = TcpStream::connect(live.krouter.addr).expect("connect");
    // Connections are accepted in order: once a later one is served, this one was accepted.
    assert_eq!(live.serial_in_force(), FIRST_SERIAL);
    let Running { krouter, .. } = live;
    let stopping = std::thread::spawn(move || krouter.stop());
    std::thread::sleep(Duration::from_millis(200));
    send_chat(&mut early, &keys[0].1, "chat");
    early
        .set_read_timeout(Some(DEADLINE))
        .expect("a read timeout");
    let mut answer = Vec::new();
    let _ = early.read_to_end(&mut answer);
    let (status, log) = stopping.join().expect("the stop thread");
    assert!(status.success(), "{log}");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}\n{log}");
    assert!(answer.contains("\r\nconnection: close\r\n"), "{answer}");
    assert!(answer.contains(r#""completion_tokens":7"#), "{answer}");
}

/// A connection that has sent nothing yet when shutdown begins does not hold the process up
/// for the header read time either.
#[test]
fn a_silent_connection_does_not_hold_up_shutdown() {
    let (live, _) = Running::start("", CHAT, &[]);
    let silent = TcpStream::connect(live.krouter.addr).expect("connect");
    assert_eq!(live.serial_in_force(), FIRST_SERIAL);
    assert_stops_promptly(live.krouter, "a silent connection");
    drop(silent);
}

/// An HTTP/2 connection with nothing in flight whose client has stopped answering (it does
/// not acknowledge the `GOAWAY` ping) does not hold the process up either.
#[test]
fn a_quiet_http2_connection_does_not_hold_up_shutdown() {
    let (live, _) = Running::start("", CHAT, &[]);
    let mut raw = Raw::connect(live.krouter.addr);
    raw.send(&h2::hello_get("/healthz"));
    assert_eq!(
        h2::reply(&mut raw, 1, DEADLINE),
        Some(h2::Answer::Headers(Some(200)))
    );
    assert_stops_promptly(live.krouter, "a quiet HTTP/2 connection");
    drop(raw);
}

/// A client that has sent only part of a request head has no request in flight: it must
/// not hold the process up for the header-read timeout.
#[test]
fn a_half_sent_request_head_does_not_hold_up_shutdown() {
    let (live, _) = Running::start("", CHAT, &[]);
    let mut slow = TcpStream::connect(live.krouter.addr).expect("connect");
    slow.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nhost: krouter\r\n")
        .expect("half a request head");
    // Connections are accepted in order: once a later one is served, this one was accepted.
    assert_eq!(live.serial_in_force(), FIRST_SERIAL);
    assert_stops_promptly(live.krouter, "a half-sent request head");
    drop(slow);
}

/// Writes a chat completion request for `model` (not streaming) on a raw connection.
fn send_chat(connection: &mut TcpStream, key: &str, model: &str) {
    let body = chat_body(model, "hi", false);
    write!(
        connection,
        "POST /v1/chat/completions HTTP/1.1\r\nhost: krouter\r\nauthorization: Bearer {key}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("the request");
}

/// Stops `krouter` with `what` open: it must exit 0 well before any header read time.
fn assert_stops_promptly(krouter: Krouter, what: &str) {
    let started = Instant::now();
    let (status, log) = krouter.stop();
    let took = started.elapsed();
    assert!(status.success(), "{log}");
    assert!(
        took < DEADLINE,
        "shutdown took {took:?} with {what} open:\n{log}"
    );
}

// === metadata rows ===

/// One `requests` row, without its id and time.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Row {
    key_id: Option<String>,
    key_group: Option<String>,
    model: Option<String>,
    provider: Option<String>,
    upstream_model: Option<String>,
    status: i64,
    latency_ms: i64,
    ttfb_ms: Option<i64>,
    tokens_in: Option<i64>,
    tokens_out: Option<i64>,
}

/// Every `requests` row by request id.
fn request_rows(home: &TempHome) -> HashMap<String, Row> {
    let db = state_db(home);
    let mut statement = db
        .prepare(
            "SELECT request_id, key_id, key_group, model, provider, upstream_model, status,
                    latency_ms, ttfb_ms, tokens_in, tokens_out FROM requests",
        )
        .expect("the requests table");
    statement
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                Row {
                    key_id: r.get(1)?,
                    key_group: r.get(2)?,
                    model: r.get(3)?,
                    provider: r.get(4)?,
                    upstream_model: r.get(5)?,
                    status: r.get(6)?,
                    latency_ms: r.get(7)?,
                    ttfb_ms: r.get(8)?,
                    tokens_in: r.get(9)?,
                    tokens_out: r.get(10)?,
                },
            ))
        })
        .expect("rows")
        .collect::<Result<_, _>>()
        .expect("readable rows")
}

/// Every text and blob value of every table of the state database.
fn every_state_value(home: &TempHome) -> String {
    use rusqlite::types::ValueRef;
    let db = state_db(home);
    let tables: Vec<String> = db
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table'")
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
        .expect("the table names");
    let mut all = String::new();
    for table in tables {
        let mut statement = db
            .prepare(&format!("SELECT * FROM \"{table}\""))
            .expect("a table");
        let columns = statement.column_count();
        let mut rows = statement.query([]).expect("rows");
        while let Some(row) = rows.next().expect("a row") {
            for i in 0..columns {
                if let ValueRef::Text(bytes) | ValueRef::Blob(bytes) =
                    row.get_ref(i).expect("a value")
                {
                    all.push_str(&String::from_utf8_lossy(bytes));
                    all.push('\n');
                }
            }
        }
    }
    all
}

#[test]
fn each_request_gets_one_metadata_row_without_content_or_secrets() {
    let quiet = "[[access.groups]]\nname = \"quiet\"\nmodels = [\"*\"]\nno_log = true\n\n";
    let (live, keys) = Running::start(quiet, CHAT, &[("app", "default"), ("hush", "quiet")]);
    let [(key_id, key), (hush_id, hush)] = &keys[..] else {
        unreachable!()
    };
    let marker = format!("prompt-marker-{}", fake_secret("", 20));
    let url = live.krouter.url("/v1/chat/completions");
    let began = unix_ms();
    let id = |reply: &Reply| {
        reply
            .header("x-request-id")
            .unwrap_or_else(|| panic!("a request id: {reply:?}"))
            .to_owned()
    };

    let ok = post(&url, Some(key), &chat_body("chat", &marker, false));
    assert_eq!(ok.status, 200, "{ok:?}");
    let unknown_key = fake_secret("sk-krouter-", 30);
    let refused = post(&url, Some(&unknown_key), &chat_body("chat", &marker, false));
    assert_eq!(refused.status, 401, "{refused:?}");
    let missing = post(&url, Some(key), &chat_body("nope", &marker, false));
    assert_eq!(missing.status, 404, "{missing:?}");
    let streamed = post(&url, Some(key), &chat_body("chat", &marker, true));
    assert_eq!(streamed.status, 200, "{streamed:?}");
    assert!(streamed.body.ends_with("data: [DONE]\n\n"), "{streamed:?}");
    let hushed = post(&url, Some(hush), &chat_body("chat", &marker, false));
    assert_eq!(hushed.status, 200, "{hushed:?}");
    // Rows go through one queue, in order: once this one is written, a row for the no_log
    // request before it would have been too.
    let last = post(&url, Some(key), &chat_body("chat", "bye", false));
    assert_eq!(last.status, 200, "{last:?}");

    let rows = eventually(
        DEADLINE,
        "the last row written",
        || request_rows(&live.home),
        |rows| rows.contains_key(&id(&last)),
    );
    let served = Row {
        key_id: Some(key_id.clone()),
        key_group: Some("default".to_owned()),
        model: Some("chat".to_owned()),
        provider: Some("mock".to_owned()),
        upstream_model: Some("real-model".to_owned()),
        status: 200,
        latency_ms: 0,
        ttfb_ms: None,
        tokens_in: Some(11),
        tokens_out: Some(7),
    };
    // Times vary: they are checked apart.
    let timeless = |row: &Row| Row {
        latency_ms: 0,
        ttfb_ms: None,
        ..row.clone()
    };
    for reply in [&ok, &streamed, &last] {
        let row = &rows[&id(reply)];
        assert_eq!(timeless(row), served, "{reply:?}");
        let ttfb = row.ttfb_ms.expect("a time to first byte");
        assert!(ttfb <= row.latency_ms && row.latency_ms < 30_000, "{row:?}");
    }
    assert_eq!(
        timeless(&rows[&id(&refused)]),
        Row {
            key_id: None,
            key_group: None,
            model: None,
            provider: None,
            upstream_model: None,
            status: 401,
            latency_ms: 0,
            ttfb_ms: None,
            tokens_in: None,
            tokens_out: None,
        }
    );
    assert_eq!(
        timeless(&rows[&id(&missing)]),
        Row {
            model: Some("nope".to_owned()),
            provider: None,
            upstream_model: None,
            status: 404,
            tokens_in: None,
            tokens_out: None,
            ..served
        }
    );
    assert!(
        !rows.contains_key(&id(&hushed)),
        "a no_log group got a row: {rows:?}"
    );
    assert_eq!(rows.len(), 5, "one row per logged request: {rows:?}");
    let (first, last_at): (i64, i64) = state_db(&live.home)
        .query_row("SELECT MIN(at), MAX(at) FROM requests", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .expect("the request times");
    assert!(began <= first && last_at <= unix_ms(), "{first}..{last_at}");

    let secrets = [marker.as_str(), key, hush, &unknown_key, &live.credential];
    assert_absent(
        &every_state_value(&live.home),
        &secrets,
        "the state database",
    );
    assert_absent_from_files(&live.home.root, &secrets, &[]);
    let (status, log) = live.krouter.stop();
    assert!(status.success(), "{log}");
    assert_absent(&log, &secrets, "the krouter log");
    // The no_log request's log line has no key, group or model either.
    let hushed_lines: Vec<&str> = log.lines().filter(|l| l.contains(&id(&hushed))).collect();
    assert!(!hushed_lines.is_empty(), "{log}");
    for line in hushed_lines {
        assert!(!line.contains(hush_id.as_str()), "{line}");
        assert!(!line.contains("\"model\""), "{line}");
        assert!(!line.contains("\"group\""), "{line}");
    }
}
