//! Usage reports over the proxy's state database, `state/state.sqlite`, for `krouter-admin
//! usage`: requests, errors, tokens and latency percentiles per key, group, model, provider
//! or UTC day.
//!
//! Two sources are added together. The `requests` table has one row per request; the rows
//! with `at` (unix milliseconds) at or after the window's start count, and only their
//! latency and time-to-first-byte figures feed the percentiles. The `usage_aggregates` table
//! (schema 3) has daily counters for `no_log` groups, which have no request rows; it has
//! whole UTC days only, so its rows count from the UTC date of the window's start on (up to a
//! day more than the request rows), and they carry no latency. They have no key id: by key
//! they form their own row, [`Bucket::NoLog`].
//!
//! It only ever reads: the file is opened read-only, never created or migrated, and a schema
//! newer than this build knows is refused rather than guessed at. Memory grows with the
//! latency figures of the window (two integers a request), nothing else: rows are streamed,
//! and only the columns a report needs are read.

use std::collections::HashMap;
use std::path::Path;

use rusqlite::{Connection, Row, ToSql};

use crate::error::Error;
use crate::state::{KNOWN, open_read_only};
use crate::store::sqlite;

/// Milliseconds in a day.
const DAY_MS: i64 = 86_400_000;
/// The first state schema with `usage_aggregates`.
const AGGREGATES_SINCE: i64 = 3;

/// What a report's rows are grouped by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dimension {
    /// The caller's key id (`kid_...`).
    Key,
    /// The key's policy group.
    Group,
    /// The model the client asked for.
    Model,
    /// The provider that answered (or was tried last).
    Provider,
    /// The UTC date (`YYYY-MM-DD`) the request arrived.
    Day,
}

/// The name of one row of a report.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Bucket {
    /// A value of the dimension: a key id, group, model, provider or day.
    Value(String),
    /// No value: a request that had no key id, model or provider (an unauthenticated or
    /// malformed request, say).
    Absent,
    /// The `no_log` groups' daily counters, which carry no key id (by key only).
    NoLog,
}

/// Counts and latency figures of a set of requests. Serialized as they are named here
/// (`krouter-admin usage --json` prints them).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Figures {
    /// Requests.
    pub requests: u64,
    /// Requests answered with status 400 or above.
    pub errors: u64,
    /// Input (prompt) tokens, where the upstream said.
    pub tokens_in: u64,
    /// Output (completion) tokens, where the upstream said.
    pub tokens_out: u64,
    /// Median time until the response ended, milliseconds; `None` without request rows.
    pub latency_p50_ms: Option<u64>,
    /// 95th percentile time until the response ended, milliseconds.
    pub latency_p95_ms: Option<u64>,
    /// Median time to the first body byte, over the requests that have one.
    pub ttfb_p50_ms: Option<u64>,
    /// 95th percentile time to the first body byte, over the requests that have one.
    pub ttfb_p95_ms: Option<u64>,
}

/// One row of a report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageRow {
    /// What the row counts.
    pub bucket: Bucket,
    /// Its figures.
    pub figures: Figures,
}

/// A usage report: rows sorted by requests (most first) then name, or by day for
/// [`Dimension::Day`], and the total over all of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageReport {
    /// What the rows are grouped by.
    pub by: Dimension,
    /// The window's start: request rows at or after it count (unix milliseconds).
    pub since_ms: i64,
    /// The UTC date of the window's start: daily counters from it on count.
    pub since_day: String,
    /// One row per bucket with any requests.
    pub rows: Vec<UsageRow>,
    /// Every row together; its percentiles are over all the window's request rows.
    pub total: Figures,
}

/// Requests of one bucket while the report is read.
#[derive(Debug, Default)]
struct Tally {
    requests: u64,
    errors: u64,
    tokens_in: u64,
    tokens_out: u64,
    latencies: Vec<u64>,
    ttfbs: Vec<u64>,
}

/// The report over the state database at `path` of the requests since `since_ms` (unix
/// milliseconds), grouped `by`. `None` when there is no state database yet.
pub fn report(path: &Path, by: Dimension, since_ms: i64) -> Result<Option<UsageReport>, Error> {
    let Some((conn, version)) = open_read_only(path)? else {
        return Ok(None);
    };
    if version > KNOWN {
        return Err(Error::StateSchema {
            path: path.to_owned(),
            found: version,
            known: KNOWN,
        });
    }
    let since_day = utc_day(since_ms);
    let mut tallies: HashMap<Bucket, Tally> = HashMap::new();
    read_requests(&conn, path, by, since_ms, &mut tallies)?;
    if version >= AGGREGATES_SINCE {
        read_aggregates(&conn, path, by, &since_day, &mut tallies)?;
    }
    let (rows, total) = finish(by, tallies);
    Ok(Some(UsageReport {
        by,
        since_ms,
        since_day,
        rows,
        total,
    }))
}

/// The UTC date of `at_ms` (unix milliseconds), `YYYY-MM-DD`.
pub fn utc_day(at_ms: i64) -> String {
    // Howard Hinnant's days-to-civil: exact for every i64 day count this can produce.
    let z = at_ms.div_euclid(DAY_MS) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

/// The nearest-rank `pct`th percentile of `sorted` (ascending): the smallest value that at
/// least `pct`% of the values are at or below; `None` when there are no values.
fn percentile(sorted: &[u64], pct: usize) -> Option<u64> {
    let rank = pct.saturating_mul(sorted.len()).div_ceil(100).max(1);
    sorted.get(rank - 1).copied()
}

/// Adds the request rows since `since_ms` to `tallies`.
fn read_requests(
    conn: &Connection,
    path: &Path,
    by: Dimension,
    since_ms: i64,
    tallies: &mut HashMap<Bucket, Tally>,
) -> Result<(), Error> {
    let (column, _) = columns(by);
    let sql = format!(
        "SELECT {column}, status, latency_ms, ttfb_ms, tokens_in, tokens_out
         FROM requests WHERE at >= ?1"
    );
    each_row(conn, path, "read the request rows", &sql, since_ms, |row| {
        let bucket = match by {
            Dimension::Day => Bucket::Value(utc_day(row.get(0)?)),
            Dimension::Key | Dimension::Group | Dimension::Model | Dimension::Provider => {
                named(row.get(0)?)
            }
        };
        let tally = tallies.entry(bucket).or_default();
        let status: i64 = row.get(1)?;
        tally.add(1, u64::from(status >= 400), count(row, 4)?, count(row, 5)?);
        tally.latencies.push(count(row, 2)?);
        if let Some(ttfb) = row.get::<_, Option<i64>>(3)? {
            tally.ttfbs.push(narrow(ttfb));
        }
        Ok(())
    })
}

/// Adds the `no_log` groups' daily counters from `since_day` on to `tallies`.
fn read_aggregates(
    conn: &Connection,
    path: &Path,
    by: Dimension,
    since_day: &str,
    tallies: &mut HashMap<Bucket, Tally>,
) -> Result<(), Error> {
    let (_, column) = columns(by);
    let sql = format!(
        "SELECT {column}, requests, errors, tokens_in, tokens_out
         FROM usage_aggregates WHERE day >= ?1"
    );
    each_row(
        conn,
        path,
        "read the usage aggregates",
        &sql,
        since_day,
        |row| {
            let bucket = match by {
                Dimension::Key => Bucket::NoLog,
                Dimension::Group | Dimension::Model | Dimension::Provider | Dimension::Day => {
                    named(row.get(0)?)
                }
            };
            let (requests, errors) = (count(row, 1)?, count(row, 2)?);
            let tokens = (count(row, 3)?, count(row, 4)?);
            tallies
                .entry(bucket)
                .or_default()
                .add(requests, errors, tokens.0, tokens.1);
            Ok(())
        },
    )
}

/// The column holding `by` in `requests` and in `usage_aggregates`. Counters have no key id:
/// by key, a constant only fills their column.
fn columns(by: Dimension) -> (&'static str, &'static str) {
    match by {
        Dimension::Key => ("key_id", "NULL"),
        Dimension::Group => ("key_group", "key_group"),
        Dimension::Model => ("model", "model"),
        Dimension::Provider => ("provider", "provider"),
        Dimension::Day => ("at", "day"),
    }
}

/// Runs `sql` with its one parameter and hands each row to `each` as it is read, so no more
/// than a row is held at a time.
fn each_row(
    conn: &Connection,
    path: &Path,
    action: &'static str,
    sql: &str,
    parameter: impl ToSql,
    mut each: impl FnMut(&Row<'_>) -> rusqlite::Result<()>,
) -> Result<(), Error> {
    let read = |e| sqlite(path, action, e);
    let mut stmt = conn.prepare(sql).map_err(read)?;
    let mut rows = stmt.query([parameter]).map_err(read)?;
    while let Some(row) = rows.next().map_err(read)? {
        each(row).map_err(read)?;
    }
    Ok(())
}

/// A dimension's value: none or empty is [`Bucket::Absent`] (the aggregates write `''` for
/// "none", since their columns are part of a key).
fn named(value: Option<String>) -> Bucket {
    value
        .filter(|v| !v.is_empty())
        .map_or(Bucket::Absent, Bucket::Value)
}

/// Column `index` as a count: NULL is 0, and a negative value (only an edited file holds
/// one) is 0 too.
fn count(row: &Row<'_>, index: usize) -> rusqlite::Result<u64> {
    Ok(row.get::<_, Option<i64>>(index)?.map_or(0, narrow))
}

fn narrow(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

/// Rows in report order and the total.
fn finish(by: Dimension, tallies: HashMap<Bucket, Tally>) -> (Vec<UsageRow>, Figures) {
    let mut total = Tally::default();
    let mut rows = Vec::with_capacity(tallies.len());
    for (bucket, mut tally) in tallies {
        rows.push(UsageRow {
            bucket,
            figures: tally.figures(),
        });
        total.add(
            tally.requests,
            tally.errors,
            tally.tokens_in,
            tally.tokens_out,
        );
        total.latencies.append(&mut tally.latencies);
        total.ttfbs.append(&mut tally.ttfbs);
    }
    match by {
        Dimension::Day => rows.sort_by(|a, b| a.bucket.cmp(&b.bucket)),
        Dimension::Key | Dimension::Group | Dimension::Model | Dimension::Provider => {
            rows.sort_by(|a, b| {
                b.figures
                    .requests
                    .cmp(&a.figures.requests)
                    .then_with(|| a.bucket.cmp(&b.bucket))
            });
        }
    }
    (rows, total.figures())
}

// === impl Tally ===

impl Tally {
    fn add(&mut self, requests: u64, errors: u64, tokens_in: u64, tokens_out: u64) {
        self.requests = self.requests.saturating_add(requests);
        self.errors = self.errors.saturating_add(errors);
        self.tokens_in = self.tokens_in.saturating_add(tokens_in);
        self.tokens_out = self.tokens_out.saturating_add(tokens_out);
    }

    /// The figures, sorting the latency values in place.
    fn figures(&mut self) -> Figures {
        self.latencies.sort_unstable();
        self.ttfbs.sort_unstable();
        Figures {
            requests: self.requests,
            errors: self.errors,
            tokens_in: self.tokens_in,
            tokens_out: self.tokens_out,
            latency_p50_ms: percentile(&self.latencies, 50),
            latency_p95_ms: percentile(&self.latencies, 95),
            ttfb_p50_ms: percentile(&self.ttfbs, 50),
            ttfb_p95_ms: percentile(&self.ttfbs, 95),
        }
    }
}

#[cfg(test)]
mod tests;
