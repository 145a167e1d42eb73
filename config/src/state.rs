//! The proxy's state database, `state/state.sqlite`: the last accepted policy (to refuse
//! rollbacks across restarts), request metadata, brute-force lockout (failures and locked
//! addresses) and, later, breaker state. Written only by the proxy; opened read-only by `krouter check` and admin reports.
//! Never holds a secret or any prompt or completion content.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use krouter_policy::{AcceptedPolicy, PolicyDigest, Serial};
use rusqlite::{Connection, OpenFlags, OptionalExtension as _, params};

use crate::error::Error;
use crate::fs::{PRIVATE_FILE, write_new};
use crate::store::{damaged, sqlite};

/// `(version, SQL)` in order.
const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../../migrations/state/0001_init.sql")),
    (2, include_str!("../../migrations/state/0002_lockout.sql")),
    (
        3,
        include_str!("../../migrations/state/0003_resilience_usage.sql"),
    ),
];
/// The newest state schema this build knows.
pub(crate) const KNOWN: i64 = 3;

/// One request's metadata: never content, never key material.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestRow {
    /// When the request arrived, unix milliseconds.
    pub at_ms: i64,
    /// The id sent to the client in `x-request-id`.
    pub request_id: String,
    /// The caller's key id (`kid_...`), if it authenticated. The names are shared
    /// (`Arc<str>`) with the proxy's request context, so a row copies no text.
    pub key_id: Option<Arc<str>>,
    /// The key's group.
    pub group: Option<Arc<str>>,
    /// The model the client asked for.
    pub model: Option<Arc<str>>,
    /// The provider that answered (or was tried last).
    pub provider: Option<Arc<str>>,
    /// The model name sent upstream.
    pub upstream_model: Option<Arc<str>>,
    /// The HTTP status sent to the client.
    pub status: u16,
    /// Time until the response ended, milliseconds.
    pub latency_ms: u64,
    /// Time until the first body byte reached the client, milliseconds.
    pub ttfb_ms: Option<u64>,
    /// Input (prompt) tokens, when the upstream said.
    pub tokens_in: Option<u64>,
    /// Output (completion) tokens, when the upstream said.
    pub tokens_out: Option<u64>,
}

/// A brute-force lockout event, by client (an IPv4 address or an IPv6 /64, as text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthEvent {
    /// A failed authentication at `at_ms` (unix milliseconds).
    Failure {
        /// The client.
        client: String,
        /// When.
        at_ms: i64,
    },
    /// The client is locked out until `until_ms` (unix milliseconds).
    Locked {
        /// The client.
        client: String,
        /// Until when.
        until_ms: i64,
    },
}

/// One target's health as kept across restarts: a breaker open (or half-open, once its time
/// passed) and a 429 rest. A row with neither is deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetHealthRow {
    /// The provider's name.
    pub provider: String,
    /// The upstream model.
    pub model: String,
    /// The breaker is open until then (unix milliseconds), half-open after; `None`: closed.
    pub open_until_ms: Option<i64>,
    /// The target rests until then (unix milliseconds) after a 429; `None`: not resting.
    pub cool_until_ms: Option<i64>,
}

/// One request of a `no_log` group, as counted in the daily aggregates: no key id, no
/// request id, no times.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AggregateRow {
    /// When the request arrived, unix milliseconds (only its UTC date is kept).
    pub at_ms: i64,
    /// The group.
    pub group: String,
    /// The model asked for, `""` when none.
    pub model: String,
    /// The provider tried last, `""` when none.
    pub provider: String,
    /// Whether the status was 400 or above.
    pub error: bool,
    /// Input tokens (0 when unknown).
    pub tokens_in: u64,
    /// Output tokens (0 when unknown).
    pub tokens_out: u64,
}

/// The lockout state read back at start-up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LockoutState {
    /// Failures since the asked time, oldest first: `(client, at_ms)`.
    pub failures: Vec<(String, i64)>,
    /// Locks still in force: `(client, until_ms)`.
    pub locks: Vec<(String, i64)>,
}

/// The state database.
pub struct StateDb {
    conn: Connection,
    path: PathBuf,
}

impl StateDb {
    /// Opens (creating it 0600 if missing) for writing: the proxy's handle.
    pub fn open(path: &Path) -> Result<Self, Error> {
        if !path.exists() {
            write_new(path, b"", PRIVATE_FILE)?;
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags)
            .map_err(|e| sqlite(path, "open the state database", e))?;
        conn.busy_timeout(Duration::from_secs(5))
            .map_err(|e| sqlite(path, "set the busy timeout", e))?;
        // A small page cache: the proxy appends rows and reads one; it needs no more. Temporary
        // tables and statement journals stay in memory: under the sandbox (and on a read-only
        // root) the state directory is the only place krouter may create a file.
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA cache_size = -256; \
             PRAGMA temp_store = MEMORY;",
        )
        .map_err(|e| sqlite(path, "set the state database's pragmas", e))?;
        crate::store::schema::apply(&conn, path, MIGRATIONS, KNOWN)?;
        Ok(Self {
            conn,
            path: path.to_owned(),
        })
    }

    /// The last accepted policy recorded at `path`, reading without writing anything (for
    /// `krouter check`); `None` when there is no state database yet.
    pub fn read_accepted(path: &Path) -> Result<Option<AcceptedPolicy>, Error> {
        match open_read_only(path)? {
            Some((conn, _version)) => accepted(&conn, path),
            None => Ok(None),
        }
    }

    /// The last accepted policy, if any.
    pub fn accepted(&self) -> Result<Option<AcceptedPolicy>, Error> {
        accepted(&self.conn, &self.path)
    }

    /// Records `policy` as the last accepted one.
    pub fn record_accepted(&self, policy: &AcceptedPolicy) -> Result<(), Error> {
        let serial = i64::try_from(policy.serial().get())
            .map_err(|_| damaged(&self.path, "a policy serial does not fit"))?;
        self.conn
            .execute(
                "INSERT INTO accepted_policy (id, serial, digest, accepted_at) VALUES (1, ?1, ?2, ?3)
                 ON CONFLICT(id) DO UPDATE SET serial = ?1, digest = ?2, accepted_at = ?3",
                params![serial, policy.digest().as_bytes().to_vec(), crate::store::now()],
            )
            .map_err(|e| sqlite(&self.path, "record the accepted policy", e))?;
        Ok(())
    }
}

impl StateDb {
    /// Appends `rows` in one transaction.
    pub fn insert_requests(&mut self, rows: &[RequestRow]) -> Result<(), Error> {
        let path = &self.path;
        let tx = self
            .conn
            .transaction()
            .map_err(|e| sqlite(path, "begin writing request rows", e))?;
        {
            let mut stmt = tx
                .prepare(
                    "INSERT INTO requests (at, request_id, key_id, key_group, model, provider,
                     upstream_model, status, latency_ms, ttfb_ms, tokens_in, tokens_out)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
                )
                .map_err(|e| sqlite(path, "prepare the request insert", e))?;
            let wide = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
            for row in rows {
                stmt.execute(params![
                    row.at_ms,
                    row.request_id,
                    row.key_id,
                    row.group,
                    row.model,
                    row.provider,
                    row.upstream_model,
                    row.status,
                    wide(row.latency_ms),
                    row.ttfb_ms.map(wide),
                    row.tokens_in.map(wide),
                    row.tokens_out.map(wide),
                ])
                .map_err(|e| sqlite(path, "write a request row", e))?;
            }
        }
        tx.commit()
            .map_err(|e| sqlite(path, "commit the request rows", e))
    }

    /// Deletes request rows older than `before_ms` (unix milliseconds); returns how many.
    pub fn prune_requests(&self, before_ms: i64) -> Result<usize, Error> {
        self.conn
            .execute("DELETE FROM requests WHERE at < ?1", params![before_ms])
            .map_err(|e| sqlite(&self.path, "delete old request rows", e))
    }

    /// Writes lockout `events` in one transaction.
    pub fn insert_auth_events(&mut self, events: &[AuthEvent]) -> Result<(), Error> {
        let path = &self.path;
        let tx = self
            .conn
            .transaction()
            .map_err(|e| sqlite(path, "begin writing lockout events", e))?;
        for event in events {
            match event {
                AuthEvent::Failure { client, at_ms } => tx.execute(
                    "INSERT INTO auth_failures (client, at) VALUES (?1, ?2)",
                    params![client, at_ms],
                ),
                // A lock uses up the failures that caused it (as the proxy's table does), so
                // a restart after the lock ends does not count them again.
                AuthEvent::Locked { client, until_ms } => tx
                    .execute(
                        "DELETE FROM auth_failures WHERE client = ?1",
                        params![client],
                    )
                    .and_then(|_| {
                        tx.execute(
                            "INSERT INTO lockouts (client, until) VALUES (?1, ?2)
                             ON CONFLICT(client) DO UPDATE SET until = max(until, ?2)",
                            params![client, until_ms],
                        )
                    }),
            }
            .map_err(|e| sqlite(path, "write a lockout event", e))?;
        }
        tx.commit()
            .map_err(|e| sqlite(path, "commit the lockout events", e))
    }

    /// Failures at or after `since_ms` and locks still in force at `now_ms`.
    pub fn lockout_state(&self, since_ms: i64, now_ms: i64) -> Result<LockoutState, Error> {
        let path = &self.path;
        let pairs = |sql: &str, arg: i64| -> Result<Vec<(String, i64)>, Error> {
            let mut stmt = self
                .conn
                .prepare(sql)
                .map_err(|e| sqlite(path, "read the lockout state", e))?;
            let rows = stmt
                .query_map(params![arg], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(|e| sqlite(path, "read the lockout state", e))?;
            rows.collect::<Result<_, _>>()
                .map_err(|e| sqlite(path, "read the lockout state", e))
        };
        Ok(LockoutState {
            failures: pairs(
                "SELECT client, at FROM auth_failures WHERE at >= ?1 ORDER BY at",
                since_ms,
            )?,
            locks: pairs(
                "SELECT client, until FROM lockouts WHERE until > ?1",
                now_ms,
            )?,
        })
    }

    /// Deletes failures older than `before_ms` and locks that ended by `now_ms`; returns how
    /// many rows went.
    pub fn prune_lockout(&self, before_ms: i64, now_ms: i64) -> Result<usize, Error> {
        let failures = self
            .conn
            .execute(
                "DELETE FROM auth_failures WHERE at < ?1",
                params![before_ms],
            )
            .map_err(|e| sqlite(&self.path, "delete old authentication failures", e))?;
        let locks = self
            .conn
            .execute("DELETE FROM lockouts WHERE until <= ?1", params![now_ms])
            .map_err(|e| sqlite(&self.path, "delete ended lockouts", e))?;
        Ok(failures + locks)
    }

    /// Writes target health `rows` in one transaction: a row with neither an open breaker
    /// nor a rest deletes the target's row.
    pub fn write_target_health(&mut self, rows: &[TargetHealthRow]) -> Result<(), Error> {
        let path = &self.path;
        let tx = self
            .conn
            .transaction()
            .map_err(|e| sqlite(path, "begin writing target health", e))?;
        for row in rows {
            if row.open_until_ms.is_none() && row.cool_until_ms.is_none() {
                tx.execute(
                    "DELETE FROM target_health WHERE provider = ?1 AND model = ?2",
                    params![row.provider, row.model],
                )
            } else {
                tx.execute(
                    "INSERT INTO target_health (provider, model, open_until, cool_until)
                     VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT(provider, model) DO UPDATE SET open_until = ?3, cool_until = ?4",
                    params![
                        row.provider,
                        row.model,
                        row.open_until_ms,
                        row.cool_until_ms
                    ],
                )
            }
            .map_err(|e| sqlite(path, "write target health", e))?;
        }
        tx.commit()
            .map_err(|e| sqlite(path, "commit target health", e))
    }

    /// Every target's health that still matters at `now_ms`: breakers open or half-open, and
    /// rests not yet over.
    pub fn target_health(&self, now_ms: i64) -> Result<Vec<TargetHealthRow>, Error> {
        let path = &self.path;
        let mut stmt = self
            .conn
            .prepare(
                "SELECT provider, model, open_until, cool_until FROM target_health
                 WHERE open_until IS NOT NULL OR cool_until > ?1",
            )
            .map_err(|e| sqlite(path, "read target health", e))?;
        let rows = stmt
            .query_map(params![now_ms], |r| {
                Ok(TargetHealthRow {
                    provider: r.get(0)?,
                    model: r.get(1)?,
                    open_until_ms: r.get(2)?,
                    cool_until_ms: r.get::<_, Option<i64>>(3)?.filter(|until| *until > now_ms),
                })
            })
            .map_err(|e| sqlite(path, "read target health", e))?;
        rows.collect::<Result<_, _>>()
            .map_err(|e| sqlite(path, "read target health", e))
    }

    /// Adds `rows` to the daily aggregates in one transaction.
    pub fn add_aggregates(&mut self, rows: &[AggregateRow]) -> Result<(), Error> {
        let path = &self.path;
        let tx = self
            .conn
            .transaction()
            .map_err(|e| sqlite(path, "begin writing usage aggregates", e))?;
        {
            let mut stmt = tx
                .prepare(
                    "INSERT INTO usage_aggregates
                     (day, key_group, model, provider, requests, errors, tokens_in, tokens_out)
                     VALUES (date(?1 / 1000, 'unixepoch'), ?2, ?3, ?4, 1, ?5, ?6, ?7)
                     ON CONFLICT(day, key_group, model, provider) DO UPDATE SET
                     requests = requests + 1, errors = errors + ?5,
                     tokens_in = tokens_in + ?6, tokens_out = tokens_out + ?7",
                )
                .map_err(|e| sqlite(path, "prepare the usage aggregate update", e))?;
            let wide = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
            for row in rows {
                stmt.execute(params![
                    row.at_ms,
                    row.group,
                    row.model,
                    row.provider,
                    i64::from(row.error),
                    wide(row.tokens_in),
                    wide(row.tokens_out),
                ])
                .map_err(|e| sqlite(path, "add to the usage aggregates", e))?;
            }
        }
        tx.commit()
            .map_err(|e| sqlite(path, "commit the usage aggregates", e))
    }

    /// Deletes daily aggregates of days before the UTC date of `before_ms`; returns how many.
    pub fn prune_aggregates(&self, before_ms: i64) -> Result<usize, Error> {
        self.conn
            .execute(
                "DELETE FROM usage_aggregates WHERE day < date(?1 / 1000, 'unixepoch')",
                params![before_ms],
            )
            .map_err(|e| sqlite(&self.path, "delete old usage aggregates", e))
    }

    /// Tokens in plus out per group since `day_ms` and since `month_ms` (unix milliseconds,
    /// the starts of the UTC day and month), from request rows and the daily aggregates of
    /// days on or after those dates: what the budgets start from.
    ///
    /// The rows are summed here as they stream past rather than by an SQL `GROUP BY`, whose
    /// sorter would hold every row of the month in memory at start-up; this way memory is
    /// one entry per group.
    pub fn group_tokens(
        &self,
        day_ms: i64,
        month_ms: i64,
    ) -> Result<Vec<(String, u64, u64)>, Error> {
        let path = &self.path;
        let read = |e| sqlite(path, "read token usage", e);
        let mut sums: HashMap<String, (u64, u64)> = HashMap::new();
        let mut add = |group: &str, today: bool, tokens: i64| {
            let tokens = u64::try_from(tokens).unwrap_or(0);
            let today_tokens = if today { tokens } else { 0 };
            match sums.get_mut(group) {
                Some((day, month)) => {
                    *day = day.saturating_add(today_tokens);
                    *month = month.saturating_add(tokens);
                }
                None => {
                    sums.insert(group.to_owned(), (today_tokens, tokens));
                }
            }
        };
        let queries = [
            "SELECT key_group, at >= ?1, coalesce(tokens_in, 0) + coalesce(tokens_out, 0)
             FROM requests WHERE at >= ?2 AND key_group IS NOT NULL",
            "SELECT key_group, day >= date(?1 / 1000, 'unixepoch'), tokens_in + tokens_out
             FROM usage_aggregates WHERE day >= date(?2 / 1000, 'unixepoch')",
        ];
        for sql in queries {
            let mut stmt = self.conn.prepare(sql).map_err(read)?;
            let mut rows = stmt.query(params![day_ms, month_ms]).map_err(read)?;
            while let Some(row) = rows.next().map_err(read)? {
                let group = row.get_ref(0).and_then(|v| Ok(v.as_str()?)).map_err(read)?;
                add(group, row.get(1).map_err(read)?, row.get(2).map_err(read)?);
            }
        }
        Ok(sums
            .into_iter()
            .map(|(g, (day, month))| (g, day, month))
            .collect())
    }

    /// The newest `limit` request rows, newest first (for reports and tests).
    pub fn recent_requests(&self, limit: u32) -> Result<Vec<RequestRow>, Error> {
        let path = &self.path;
        let mut stmt = self
            .conn
            .prepare(
                "SELECT at, request_id, key_id, key_group, model, provider, upstream_model,
                 status, latency_ms, ttfb_ms, tokens_in, tokens_out
                 FROM requests ORDER BY id DESC LIMIT ?1",
            )
            .map_err(|e| sqlite(path, "read the request rows", e))?;
        let narrow = |v: i64| u64::try_from(v).unwrap_or(0);
        let rows = stmt
            .query_map(params![limit], |r| {
                Ok(RequestRow {
                    at_ms: r.get(0)?,
                    request_id: r.get(1)?,
                    key_id: r.get(2)?,
                    group: r.get(3)?,
                    model: r.get(4)?,
                    provider: r.get(5)?,
                    upstream_model: r.get(6)?,
                    status: r.get(7)?,
                    latency_ms: narrow(r.get(8)?),
                    ttfb_ms: r.get::<_, Option<i64>>(9)?.map(narrow),
                    tokens_in: r.get::<_, Option<i64>>(10)?.map(narrow),
                    tokens_out: r.get::<_, Option<i64>>(11)?.map(narrow),
                })
            })
            .map_err(|e| sqlite(path, "read the request rows", e))?;
        rows.collect::<Result<_, _>>()
            .map_err(|e| sqlite(path, "read the request rows", e))
    }
}

/// Opens `path` read-only, never creating or migrating it, and reads its schema version;
/// `None` when there is no state database yet (no file, or a file the proxy has not yet
/// given a schema).
pub(crate) fn open_read_only(path: &Path) -> Result<Option<(Connection, i64)>, Error> {
    if !path.exists() {
        return Ok(None);
    }
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)
        .map_err(|e| sqlite(path, "open the state database read-only", e))?;
    conn.busy_timeout(Duration::from_secs(5))
        .map_err(|e| sqlite(path, "set the busy timeout", e))?;
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|e| sqlite(path, "read the schema version", e))?;
    Ok((version != 0).then_some((conn, version)))
}

fn accepted(conn: &Connection, path: &Path) -> Result<Option<AcceptedPolicy>, Error> {
    let row: Option<(i64, Vec<u8>)> = conn
        .query_row(
            "SELECT serial, digest FROM accepted_policy WHERE id = 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(|e| sqlite(path, "read the accepted policy", e))?;
    let Some((serial, digest)) = row else {
        return Ok(None);
    };
    let serial = u64::try_from(serial)
        .ok()
        .and_then(Serial::try_new)
        .ok_or_else(|| damaged(path, "the accepted policy serial is invalid"))?;
    let digest: [u8; 32] = digest
        .try_into()
        .map_err(|_| damaged(path, "the accepted policy digest is malformed"))?;
    Ok(Some(AcceptedPolicy::new(
        serial,
        PolicyDigest::from_bytes(digest),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_accepted_policy_survives_a_reopen_and_reads_without_writing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.sqlite");
        assert_eq!(StateDb::read_accepted(&path).unwrap(), None);
        assert!(!path.exists(), "a read created the file");
        let db = StateDb::open(&path).unwrap();
        assert_eq!(db.accepted().unwrap(), None);
        let accepted = AcceptedPolicy::new(Serial::try_new(7).unwrap(), PolicyDigest::of(b"p"));
        db.record_accepted(&accepted).unwrap();
        drop(db);
        assert_eq!(StateDb::read_accepted(&path).unwrap(), Some(accepted));
        assert_eq!(
            StateDb::open(&path).unwrap().accepted().unwrap(),
            Some(accepted)
        );
    }

    #[test]
    fn group_tokens_sum_rows_and_aggregates_by_day_and_month() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = StateDb::open(&dir.path().join("state.sqlite")).unwrap();
        const DAY: i64 = 86_400_000;
        // Month start at day 10, day start at day 12 (whole UTC days).
        let (month, day) = (10 * DAY, 12 * DAY);
        let row = |at_ms, group: &str, tokens_in| RequestRow {
            at_ms,
            group: Some(group.into()),
            tokens_in: Some(tokens_in),
            tokens_out: Some(1),
            ..RequestRow::default()
        };
        db.insert_requests(&[
            row(month - 1, "a", 100),
            row(month, "a", 10),
            row(day + 5, "a", 20),
            row(day + 6, "b", 1),
        ])
        .unwrap();
        let aggregate = |at_ms, tokens_in| AggregateRow {
            at_ms,
            group: "p".into(),
            model: "m".into(),
            provider: String::new(),
            error: false,
            tokens_in,
            tokens_out: 0,
        };
        db.add_aggregates(&[
            aggregate(month + DAY, 7),
            aggregate(day + 1, 3),
            aggregate(day + 2, 3),
        ])
        .unwrap();
        let mut spent = db.group_tokens(day, month).unwrap();
        spent.sort();
        assert_eq!(
            spent,
            [
                ("a".to_owned(), 21, 32),
                ("b".to_owned(), 2, 2),
                ("p".to_owned(), 6, 13)
            ]
        );
    }

    #[test]
    fn lockout_events_survive_a_reopen_and_prune() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.sqlite");
        let mut db = StateDb::open(&path).unwrap();
        let failure = |client: &str, at_ms| AuthEvent::Failure {
            client: client.into(),
            at_ms,
        };
        db.insert_auth_events(&[
            failure("192.0.2.1", 1_000),
            failure("192.0.2.1", 2_000),
            failure("2001:db8::/64", 3_000),
            AuthEvent::Locked {
                client: "192.0.2.1".into(),
                until_ms: 10_000,
            },
            AuthEvent::Locked {
                client: "192.0.2.1".into(),
                until_ms: 5_000,
            },
        ])
        .unwrap();
        drop(db);
        let db = StateDb::open(&path).unwrap();
        let state = db.lockout_state(0, 4_000).unwrap();
        // The lock used up 192.0.2.1's failures.
        assert_eq!(state.failures, [("2001:db8::/64".into(), 3_000)]);
        // A shorter lock never shortens a longer one.
        assert_eq!(state.locks, [("192.0.2.1".into(), 10_000)]);
        assert_eq!(db.prune_lockout(3_500, 10_000).unwrap(), 2);
        assert!(db.lockout_state(0, 0).unwrap().failures.is_empty());
        assert!(db.lockout_state(0, 0).unwrap().locks.is_empty());
    }

    #[test]
    fn request_rows_round_trip_in_one_batch() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = StateDb::open(&dir.path().join("state.sqlite")).unwrap();
        assert!(db.recent_requests(10).unwrap().is_empty());
        let first = RequestRow {
            at_ms: 1,
            request_id: "req_1".into(),
            key_id: Some("kid_abc".into()),
            status: 200,
            latency_ms: 12,
            ttfb_ms: Some(3),
            tokens_in: Some(11),
            tokens_out: Some(u64::MAX),
            ..RequestRow::default()
        };
        let second = RequestRow {
            at_ms: 2,
            request_id: "req_2".into(),
            status: 401,
            ..RequestRow::default()
        };
        db.insert_requests(&[first, second.clone()]).unwrap();
        let rows = db.recent_requests(10).unwrap();
        assert_eq!(rows[0], second);
        // Values beyond SQLite's range are clamped, never wrapped.
        assert_eq!(rows[1].tokens_out, Some(i64::MAX as u64));
        assert_eq!(rows[1].request_id, "req_1");
        assert_eq!(db.prune_requests(2).unwrap(), 1);
        assert_eq!(db.recent_requests(10).unwrap(), vec![second]);
    }
}
