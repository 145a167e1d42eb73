//! `krouter-admin usage` through the real binary: a home before the proxy has served, a
//! seeded state database read by model, group, key, day and window, bad windows, a schema
//! from a newer krouter, the state file left exactly as it was, and a report beside a
//! serving proxy of the rows it records.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use krouter_config::state::{RequestRow, StateDb};
use krouter_config::usage::utc_day;
use krouter_tests::bins::Run;
use krouter_tests::client::post;
use krouter_tests::home::TempHome as Home;
use krouter_tests::krouter::{Krouter, policy};
use krouter_tests::upstream::MockUpstream;
use rusqlite::{Connection, OpenFlags, params};
use serde_json::Value;

const MINUTE: i64 = 60_000;
const DAY: i64 = 86_400_000;

fn unix_ms() -> i64 {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    i64::try_from(since.as_millis()).unwrap()
}

fn json(run: &Run) -> Value {
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {run:?}"))
}

/// The cells of the table line whose first cell is `name`.
fn cells<'a>(run: &'a Run, name: &str) -> Vec<&'a str> {
    run.stdout
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|c| c.first() == Some(&name))
        .unwrap_or_else(|| panic!("a {name} row: {run:?}"))
}

fn request(
    at_ms: i64,
    key: Option<&str>,
    model: Option<&str>,
    status: u16,
    latency_ms: u64,
    ttfb_ms: Option<u64>,
) -> RequestRow {
    RequestRow {
        at_ms,
        request_id: format!("req_{at_ms}_{latency_ms}"),
        key_id: key.map(Into::into),
        group: key.map(|_| "team".into()),
        model: model.map(Into::into),
        provider: model.map(|m| {
            if m.starts_with("gpt") {
                "openai".into()
            } else {
                "anthropic".into()
            }
        }),
        status,
        latency_ms,
        ttfb_ms,
        tokens_in: model.map(|_| 10),
        tokens_out: model.map(|_| 20),
        ..RequestRow::default()
    }
}

/// Writes the state database the proxy would have: request rows over the last eight days
/// and `no_log` counters for today and a month ago.
fn seed(path: &Path, now: i64) {
    let mut db = StateDb::open(path).unwrap();
    db.insert_requests(&[
        request(
            now - 10 * MINUTE,
            Some("kid_a"),
            Some("gpt-4o"),
            200,
            100,
            Some(10),
        ),
        request(
            now - 9 * MINUTE,
            Some("kid_a"),
            Some("gpt-4o"),
            200,
            200,
            Some(20),
        ),
        request(
            now - 8 * MINUTE,
            Some("kid_a"),
            Some("gpt-4o"),
            500,
            300,
            None,
        ),
        request(now - 5 * MINUTE, None, None, 401, 1, None),
        request(
            now - 120 * MINUTE,
            Some("kid_b"),
            Some("claude"),
            200,
            50,
            Some(5),
        ),
        // Outside the default seven days.
        request(
            now - 8 * DAY,
            Some("kid_a"),
            Some("gpt-4o"),
            200,
            9_999,
            None,
        ),
    ])
    .unwrap();
    drop(db);
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE).unwrap();
    for (day, requests) in [(utc_day(now), 4), (utc_day(now - 30 * DAY), 100)] {
        conn.execute(
            "INSERT INTO usage_aggregates (day, key_group, model, provider, requests, errors,
             tokens_in, tokens_out) VALUES (?1, 'private', 'gpt-4o', 'openai', ?2, 1, 40, 80)",
            params![day, requests],
        )
        .unwrap();
    }
}

#[test]
fn usage_reports_the_state_database_and_leaves_it_as_it_was() {
    let home = Home::init();
    let state = home.root.join("state/state.sqlite");

    // Before the proxy has served there is no state database: nothing to report, and the
    // report creates nothing.
    let none = home.admin(&["usage"]);
    assert_eq!(none.code, 0, "{none:?}");
    assert!(none.stdout.starts_with("no usage yet: "), "{none:?}");
    let none = home.admin(&["usage", "--json"]);
    assert_eq!(none.code, 0, "{none:?}");
    let body = json(&none);
    assert_eq!(body["result"], "usage");
    assert_eq!(body["found"], false);
    assert_eq!(body["rows"], Value::Array(Vec::new()));
    assert_eq!(body["total"]["requests"], 0);
    assert!(
        fs::read_dir(home.root.join("state"))
            .unwrap()
            .next()
            .is_none(),
        "the report created a file in state/"
    );

    let now = unix_ms();
    seed(&state, now);
    // An old modification time: any write by a report would move it.
    let old = SystemTime::now() - Duration::from_secs(3_600);
    fs::File::options()
        .write(true)
        .open(&state)
        .unwrap()
        .set_modified(old)
        .unwrap();
    let bytes = fs::read(&state).unwrap();
    let modified = fs::metadata(&state).unwrap().modified().unwrap();

    // By model over seven days: three gpt-4o rows and today's four no_log requests, one
    // claude row, one request without a model.
    let by_model = home.admin(&["usage"]);
    assert_eq!(by_model.code, 0, "{by_model:?}");
    assert!(
        by_model.stdout.starts_with("usage by model since "),
        "{by_model:?}"
    );
    for expected in [
        "MODEL REQUESTS ERRORS TOKENS_IN TOKENS_OUT LATENCY_P50 LATENCY_P95 TTFB_P50 TTFB_P95",
        "gpt-4o 7 2 70 140 200 300 10 20",
        "claude 1 0 10 20 50 50 5 5",
        "- 1 1 0 0 1 1 - -",
        "TOTAL 9 3 80 160 100 300 10 20",
    ] {
        let name = expected.split(' ').next().unwrap();
        assert_eq!(cells(&by_model, name).join(" "), expected, "{by_model:?}");
    }
    let names: Vec<&str> = by_model
        .stdout
        .lines()
        .skip(2)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(names, ["gpt-4o", "claude", "-", "TOTAL"]);

    // By group as JSON: equal counts sort by name; the no_log group has no latency.
    let by_group = home.admin(&["usage", "--by", "group", "--json"]);
    assert_eq!(by_group.code, 0, "{by_group:?}");
    let body = json(&by_group);
    assert_eq!(body["by"], "group");
    assert_eq!(body["since"], "7d");
    assert_eq!(body["found"], true);
    let rows = body["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 3, "{body}");
    assert_eq!(rows[0]["group"], "private");
    assert_eq!(rows[0]["requests"], 4);
    assert_eq!(rows[0]["errors"], 1);
    assert_eq!(rows[0]["latency_p50_ms"], Value::Null);
    assert_eq!(rows[1]["group"], "team");
    assert_eq!(rows[1]["requests"], 4);
    assert_eq!(rows[1]["latency_p50_ms"], 100);
    assert_eq!(rows[1]["latency_p95_ms"], 300);
    assert_eq!(rows[2]["group"], Value::Null);
    assert_eq!(body["total"]["requests"], 9);
    assert_eq!(body["total"]["tokens_in"], 80);

    // By key: the no_log counters have no key id and get a row of their own.
    let by_key = home.admin(&["usage", "--by", "key"]);
    assert_eq!(by_key.code, 0, "{by_key:?}");
    assert_eq!(cells(&by_key, "(no_log)")[1], "4");
    assert_eq!(cells(&by_key, "kid_a")[1], "3");
    let body = json(&home.admin(&["--json", "usage", "--by", "key"]));
    let no_log: Vec<&Value> = body["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["no_log"] == true)
        .collect();
    assert_eq!(no_log.len(), 1, "{body}");
    assert_eq!(no_log[0]["key"], Value::Null);
    assert_eq!(no_log[0]["requests"], 4);

    // The last hour: the claude request two hours ago is out; today's counters are in.
    let hour = home.admin(&["usage", "--since", "1h"]);
    assert_eq!(hour.code, 0, "{hour:?}");
    assert!(!hour.stdout.contains("claude"), "{hour:?}");
    assert_eq!(cells(&hour, "TOTAL")[1], "8");

    // By day, oldest first, over the last two weeks: the eight-day-old row is in.
    let by_day = home.admin(&["usage", "--by", "day", "--since", "2w"]);
    assert_eq!(by_day.code, 0, "{by_day:?}");
    assert_eq!(cells(&by_day, &utc_day(now - 8 * DAY))[1], "1");
    assert_eq!(cells(&by_day, "TOTAL")[1], "10");

    // A bad window is a usage error that names the flag and the forms it takes.
    for bad in ["3x", "0d", "7", "yesterday"] {
        let run = home.admin(&["usage", "--since", bad]);
        assert_eq!(run.code, 2, "{bad}: {run:?}");
        assert!(
            run.stderr.contains("--since") && run.stderr.contains("30m, 24h, 7d or 2w"),
            "{bad}: {run:?}"
        );
    }
    let run = home.admin(&["usage", "--by", "week"]);
    assert_eq!(run.code, 2, "{run:?}");
    let run = home.admin(&["usage", "--since", "3x", "--json"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert_eq!(json(&run)["exit_code"], 2);

    // Nothing above wrote the state database.
    assert!(fs::read(&state).unwrap() == bytes, "the state file changed");
    assert_eq!(fs::metadata(&state).unwrap().modified().unwrap(), modified);

    // A state database from a newer krouter is refused, not guessed at.
    let conn = Connection::open_with_flags(&state, OpenFlags::SQLITE_OPEN_READ_WRITE).unwrap();
    conn.pragma_update(None, "user_version", 99).unwrap();
    drop(conn);
    let newer = home.admin(&["usage"]);
    assert_eq!(newer.code, 1, "{newer:?}");
    assert!(newer.stderr.contains("schema version is 99"), "{newer:?}");
}

#[test]
fn usage_reads_what_a_serving_proxy_records() {
    let home = Home::init();
    let upstream = MockUpstream::start();
    home.write_policy(&policy(
        2,
        &format!(
            "[[providers]]\nname = \"mock\"\nkind = \"openai-compatible\"\nbase_url = \"{}\"\n\n\
             [[routes]]\nmodel = \"chat\"\ntargets = [\"mock:real-model\"]\n",
            upstream.base_url()
        ),
    ));
    let (id, key) = home.create_key("app");
    let krouter = Krouter::spawn(&home, &[]);
    let url = krouter.url("/v1/chat/completions");
    let chat = r#"{"model":"chat","messages":[{"role":"user","content":"hi"}]}"#;
    for _ in 0..3 {
        assert_eq!(post(&url, Some(&key), chat).status, 200);
    }
    assert_eq!(post(&url, None, chat).status, 401);

    // Rows reach the state database in batches; the report, run while the proxy serves
    // (and holds the database open for writing), sees them.
    let deadline = Instant::now() + Duration::from_secs(10);
    let body = loop {
        let run = home.admin(&["usage", "--by", "key", "--since", "30m", "--json"]);
        assert_eq!(run.code, 0, "{run:?}");
        let body = json(&run);
        if body["total"]["requests"] == 4 {
            break body;
        }
        assert!(Instant::now() < deadline, "the rows never came: {run:?}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let rows = body["rows"].as_array().unwrap();
    assert_eq!(rows[0]["key"], id.as_str(), "{body}");
    assert_eq!(rows[0]["requests"], 3);
    assert_eq!(rows[0]["errors"], 0);
    assert_eq!(rows[0]["tokens_in"], 33);
    assert_eq!(rows[0]["tokens_out"], 21);
    assert!(rows[0]["latency_p95_ms"].is_u64(), "{body}");
    assert!(rows[0]["ttfb_p50_ms"].is_u64(), "{body}");
    assert_eq!(rows[1]["key"], Value::Null);
    assert_eq!(rows[1]["errors"], 1);

    // The proxy went on serving and recording undisturbed.
    assert_eq!(post(&url, Some(&key), chat).status, 200);
    let (status, log) = krouter.stop();
    assert!(status.success(), "{log}");
    assert!(log.contains("\"metadata_rows_dropped\":0"), "{log}");
}

#[test]
fn a_no_log_group_is_only_counted_by_day_and_the_report_adds_it_in() {
    let home = Home::init();
    let upstream = MockUpstream::start();
    let text = format!(
        "serial = 2\n\n[access]\nrequire_api_keys = true\n\n[[access.groups]]\nname = \"default\"\n\
         models = [\"*\"]\n\n[[access.groups]]\nname = \"private\"\nmodels = [\"*\"]\nno_log = true\n\n\
         [[providers]]\nname = \"mock\"\nkind = \"openai-compatible\"\nbase_url = \"{}\"\n\n\
         [[routes]]\nmodel = \"chat\"\ntargets = [\"mock:real-model\"]\n",
        upstream.base_url()
    );
    home.write_policy(&text);
    let run = home.admin(&[
        "--json", "keys", "create", "--label", "p", "--group", "private",
    ]);
    assert_eq!(run.code, 0, "{run:?}");
    let key = krouter_tests::home::json_field(&run.stdout, "secret");
    let krouter = Krouter::spawn(&home, &[]);
    let url = krouter.url("/v1/chat/completions");
    let chat = r#"{"model":"chat","messages":[{"role":"user","content":"hi"}]}"#;
    for _ in 0..2 {
        assert_eq!(post(&url, Some(&key), chat).status, 200);
    }
    let (status, log) = krouter.stop();
    assert!(status.success(), "{log}");

    // No request row, no key id: only the day's counters.
    let state = home.root.join("state/state.sqlite");
    let conn = Connection::open_with_flags(&state, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let rows: i64 = conn
        .query_row("SELECT count(*) FROM requests", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 0);
    let (requests, tokens_in, tokens_out): (i64, i64, i64) = conn
        .query_row(
            "SELECT requests, tokens_in, tokens_out FROM usage_aggregates WHERE key_group = 'private' AND model = 'chat' AND provider = 'mock'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!((requests, tokens_in, tokens_out), (2, 22, 14));
    drop(conn);
    let run = home.admin(&["usage", "--by", "group", "--json"]);
    assert_eq!(run.code, 0, "{run:?}");
    let body = json(&run);
    assert_eq!(body["total"]["requests"], 2, "{body}");
    assert_eq!(body["rows"][0]["group"], "private", "{body}");
    assert_eq!(body["rows"][0]["tokens_out"], 14, "{body}");
}
