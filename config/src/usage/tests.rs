use std::path::PathBuf;

use rusqlite::{OpenFlags, params};

use super::*;
use crate::state::{RequestRow, StateDb};

/// 2025-06-15T12:00:00Z.
const NOW: i64 = 1_749_988_800_000;
const HOUR: i64 = 3_600_000;

fn home() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.sqlite");
    (dir, path)
}

/// A request row at `at` answered with `status` in `latency_ms`.
fn request(at: i64, model: Option<&str>, status: u16, latency_ms: u64) -> RequestRow {
    RequestRow {
        at_ms: at,
        request_id: format!("req_{at}_{latency_ms}"),
        key_id: Some("kid_alice".into()),
        group: Some("default".into()),
        model: model.map(Into::into),
        provider: Some("openai".into()),
        status,
        latency_ms,
        ..RequestRow::default()
    }
}

/// Adds a `no_log` daily counter row.
fn aggregate(path: &Path, day: &str, group: &str, model: &str, counts: [i64; 4]) {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE).unwrap();
    conn.execute(
        "INSERT INTO usage_aggregates (day, key_group, model, provider, requests, errors,
         tokens_in, tokens_out) VALUES (?1, ?2, ?3, '', ?4, ?5, ?6, ?7)",
        params![
            day, group, model, counts[0], counts[1], counts[2], counts[3]
        ],
    )
    .unwrap();
}

fn row(report: &UsageReport, bucket: &Bucket) -> Figures {
    report
        .rows
        .iter()
        .find(|r| &r.bucket == bucket)
        .unwrap_or_else(|| panic!("{bucket:?} in {report:#?}"))
        .figures
        .clone()
}

fn value(name: &str) -> Bucket {
    Bucket::Value(name.to_owned())
}

#[test]
fn no_state_database_is_no_report_and_creates_nothing() {
    let (_dir, path) = home();
    assert_eq!(report(&path, Dimension::Model, 0).unwrap(), None);
    assert!(!path.exists(), "a report created the file");
    // A file the proxy created but has not given a schema yet.
    std::fs::write(&path, b"").unwrap();
    assert_eq!(report(&path, Dimension::Model, 0).unwrap(), None);
    assert_eq!(std::fs::read(&path).unwrap(), b"");
}

#[test]
fn a_newer_schema_is_refused() {
    let (_dir, path) = home();
    drop(StateDb::open(&path).unwrap());
    let conn = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_WRITE).unwrap();
    conn.pragma_update(None, "user_version", KNOWN + 1).unwrap();
    drop(conn);
    let error = report(&path, Dimension::Model, 0).unwrap_err();
    assert!(
        matches!(&error, Error::StateSchema { found, known, .. } if *found == KNOWN + 1 && *known == KNOWN),
        "{error:?}"
    );
    assert!(error.to_string().contains("state.sqlite"), "{error}");
}

#[test]
fn an_older_schema_without_aggregates_still_reports_requests() {
    let (_dir, path) = home();
    let conn = Connection::open_with_flags(
        &path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE,
    )
    .unwrap();
    conn.execute_batch(include_str!("../../../migrations/state/0001_init.sql"))
        .unwrap();
    conn.pragma_update(None, "user_version", 1).unwrap();
    conn.execute(
        "INSERT INTO requests (at, request_id, status, latency_ms) VALUES (?1, 'r', 200, 9)",
        params![NOW],
    )
    .unwrap();
    drop(conn);
    let report = report(&path, Dimension::Model, 0).unwrap().unwrap();
    assert_eq!(report.total.requests, 1);
    assert_eq!(report.rows[0].bucket, Bucket::Absent);
}

#[test]
fn counts_errors_tokens_and_nearest_rank_percentiles_by_model() {
    let (_dir, path) = home();
    let mut db = StateDb::open(&path).unwrap();
    let since = NOW - 24 * HOUR;
    let mut rows: Vec<RequestRow> = (1..=20)
        .map(|ms| RequestRow {
            // Every other one has a time to first byte: 2, 4, ..., 20 halved.
            ttfb_ms: (ms % 2 == 0).then_some(ms / 2),
            tokens_in: Some(10),
            tokens_out: (ms <= 5).then_some(100),
            ..request(since + i64::try_from(ms).unwrap(), Some("gpt"), 200, ms)
        })
        .collect();
    // Errors are 400 and above; a 399 is not one.
    rows[0].status = 400;
    rows[1].status = 503;
    rows[2].status = 399;
    rows.push(request(NOW, Some("claude"), 429, 7));
    rows.push(request(NOW, None, 401, 1));
    // Just before the window: left out.
    rows.push(request(since - 1, Some("gpt"), 500, 1_000));
    db.insert_requests(&rows).unwrap();

    let report = report(&path, Dimension::Model, since).unwrap().unwrap();
    assert_eq!(report.by, Dimension::Model);
    assert_eq!(report.since_ms, since);
    assert_eq!(report.since_day, "2025-06-14");
    let buckets: Vec<_> = report.rows.iter().map(|r| r.bucket.clone()).collect();
    // Most requests first; equal counts by name, a named one before "none".
    assert_eq!(buckets, [value("gpt"), value("claude"), Bucket::Absent]);
    assert_eq!(
        row(&report, &value("gpt")),
        Figures {
            requests: 20,
            errors: 2,
            tokens_in: 200,
            tokens_out: 500,
            // ceil(0.5 * 20) = 10th and ceil(0.95 * 20) = 19th of 1..=20.
            latency_p50_ms: Some(10),
            latency_p95_ms: Some(19),
            // Over the ten that have one: 1..=10.
            ttfb_p50_ms: Some(5),
            ttfb_p95_ms: Some(10),
        }
    );
    assert_eq!(
        row(&report, &value("claude")),
        Figures {
            requests: 1,
            errors: 1,
            latency_p50_ms: Some(7),
            latency_p95_ms: Some(7),
            ..Figures::default()
        }
    );
    assert_eq!(
        report.total,
        Figures {
            requests: 22,
            errors: 4,
            tokens_in: 200,
            tokens_out: 500,
            // 1, 1, 2, 3, 4, 5, 6, 7, 7, 8, 9, ..., 20: the 11th of 22 is 9, the 21st is 19.
            latency_p50_ms: Some(9),
            latency_p95_ms: Some(19),
            ttfb_p50_ms: Some(5),
            ttfb_p95_ms: Some(10),
        }
    );
}

#[test]
fn the_window_counts_request_rows_by_the_millisecond() {
    let (_dir, path) = home();
    let mut db = StateDb::open(&path).unwrap();
    db.insert_requests(&[
        request(NOW - 2 * HOUR, Some("m"), 200, 1),
        request(NOW - HOUR, Some("m"), 200, 2),
        request(NOW, Some("m"), 200, 3),
    ])
    .unwrap();
    let count = |since| {
        report(&path, Dimension::Model, since)
            .unwrap()
            .unwrap()
            .total
            .requests
    };
    assert_eq!(count(NOW - 3 * HOUR), 3);
    assert_eq!(count(NOW - HOUR), 2);
    assert_eq!(count(NOW - HOUR + 1), 1);
    assert_eq!(count(NOW + 1), 0);
    let empty = report(&path, Dimension::Model, NOW + 1).unwrap().unwrap();
    assert!(empty.rows.is_empty());
    assert_eq!(empty.total, Figures::default());
}

#[test]
fn no_log_counters_count_by_whole_days_and_have_no_key_or_latency() {
    let (_dir, path) = home();
    let mut db = StateDb::open(&path).unwrap();
    db.insert_requests(&[
        request(NOW, Some("gpt"), 200, 10),
        RequestRow {
            key_id: None,
            group: None,
            ..request(NOW, Some("gpt"), 401, 1)
        },
    ])
    .unwrap();
    // The window starts 2025-06-14T12:00Z: the whole of the 14th's counters count, the
    // 13th's do not.
    aggregate(&path, "2025-06-13", "private", "gpt", [100, 100, 100, 100]);
    aggregate(&path, "2025-06-14", "private", "gpt", [3, 1, 30, 60]);
    aggregate(&path, "2025-06-15", "private", "", [2, 0, 5, 0]);
    let since = NOW - 24 * HOUR;

    let by_key = report(&path, Dimension::Key, since).unwrap().unwrap();
    let buckets: Vec<_> = by_key.rows.iter().map(|r| r.bucket.clone()).collect();
    assert_eq!(buckets, [Bucket::NoLog, value("kid_alice"), Bucket::Absent]);
    assert_eq!(
        row(&by_key, &Bucket::NoLog),
        Figures {
            requests: 5,
            errors: 1,
            tokens_in: 35,
            tokens_out: 60,
            ..Figures::default()
        }
    );
    assert_eq!(by_key.total.requests, 7);
    assert_eq!(by_key.total.errors, 2);
    // Latency is over the two request rows only.
    assert_eq!(by_key.total.latency_p50_ms, Some(1));
    assert_eq!(by_key.total.latency_p95_ms, Some(10));

    let by_group = report(&path, Dimension::Group, since).unwrap().unwrap();
    assert_eq!(row(&by_group, &value("private")).requests, 5);
    assert_eq!(row(&by_group, &value("private")).latency_p50_ms, None);
    assert_eq!(row(&by_group, &value("default")).requests, 1);
    assert_eq!(row(&by_group, &Bucket::Absent).requests, 1);

    // A counter's '' model is "none"; its named model joins the request rows' one.
    let by_model = report(&path, Dimension::Model, since).unwrap().unwrap();
    assert_eq!(row(&by_model, &value("gpt")).requests, 5);
    assert_eq!(row(&by_model, &value("gpt")).latency_p95_ms, Some(10));
    assert_eq!(row(&by_model, &Bucket::Absent).requests, 2);
    assert_eq!(by_model.rows.len(), 2);

    let by_provider = report(&path, Dimension::Provider, since).unwrap().unwrap();
    assert_eq!(row(&by_provider, &value("openai")).requests, 2);
    assert_eq!(row(&by_provider, &Bucket::Absent).requests, 5);
}

#[test]
fn by_day_is_in_date_order_and_joins_the_counters() {
    let (_dir, path) = home();
    let mut db = StateDb::open(&path).unwrap();
    let midnight = NOW - 12 * HOUR;
    db.insert_requests(&[
        request(midnight, Some("m"), 200, 1),
        request(midnight - 1, Some("m"), 200, 2),
        request(midnight - 1, Some("m"), 200, 3),
        request(midnight - 25 * HOUR, Some("m"), 200, 4),
    ])
    .unwrap();
    aggregate(&path, "2025-06-15", "private", "m", [4, 0, 0, 0]);
    let report = report(&path, Dimension::Day, NOW - 72 * HOUR)
        .unwrap()
        .unwrap();
    assert_eq!(report.since_day, "2025-06-12");
    let days: Vec<_> = report
        .rows
        .iter()
        .map(|r| (r.bucket.clone(), r.figures.requests))
        .collect();
    assert_eq!(
        days,
        [
            (value("2025-06-13"), 1),
            (value("2025-06-14"), 2),
            (value("2025-06-15"), 5),
        ]
    );
}

#[test]
fn a_report_reads_while_the_proxy_writes_and_changes_nothing() {
    let (_dir, path) = home();
    let mut db = StateDb::open(&path).unwrap();
    db.insert_requests(&[request(NOW, Some("m"), 200, 1)])
        .unwrap();
    let before = std::fs::read(&path).unwrap();
    let report = report(&path, Dimension::Model, 0).unwrap().unwrap();
    assert_eq!(report.total.requests, 1);
    assert_eq!(std::fs::read(&path).unwrap(), before);
    // The writer is not blocked by the report having read.
    db.insert_requests(&[request(NOW, Some("m"), 200, 1)])
        .unwrap();
}

#[test]
fn percentiles_are_nearest_rank() {
    assert_eq!(percentile(&[], 50), None);
    assert_eq!(percentile(&[7], 50), Some(7));
    assert_eq!(percentile(&[7], 95), Some(7));
    assert_eq!(percentile(&[1, 2, 3, 4], 50), Some(2));
    assert_eq!(percentile(&[1, 2, 3, 4], 95), Some(4));
    let hundred: Vec<u64> = (1..=100).collect();
    assert_eq!(percentile(&hundred, 50), Some(50));
    assert_eq!(percentile(&hundred, 95), Some(95));
    assert_eq!(percentile(&hundred, 100), Some(100));
    assert_eq!(percentile(&hundred, 0), Some(1));
}

#[test]
fn utc_days_match_sqlite() {
    assert_eq!(utc_day(0), "1970-01-01");
    assert_eq!(utc_day(-1), "1969-12-31");
    assert_eq!(utc_day(951_782_400_000), "2000-02-29");
    assert_eq!(utc_day(NOW), "2025-06-15");
    assert_eq!(utc_day(253_402_300_799_999), "9999-12-31");
    let conn = Connection::open_in_memory().unwrap();
    let mut stmt = conn
        .prepare("SELECT strftime('%Y-%m-%d', ?1, 'unixepoch')")
        .unwrap();
    // Every day across leap years and centuries, at a varying time of day.
    let mut at_ms: i64 = -86_400_000 * 365 * 3;
    while at_ms < 253_402_300_799_000 {
        let day: String = stmt
            .query_row(params![at_ms.div_euclid(1000)], |r| r.get(0))
            .unwrap();
        assert_eq!(utc_day(at_ms), day, "{at_ms}");
        at_ms += 86_400_000 * 29 + 3_607_001;
    }
}
