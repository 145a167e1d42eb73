//! The audit log: one row per admin action (time, OS user, action, target, outcome; never a
//! secret), append-only and chained: each row's MAC covers the previous row's MAC and the
//! row's own fields, under a random key kept sealed in the store. `verify` names the first
//! row that was edited, inserted or deleted.

use std::path::Path;

use rusqlite::{Connection, Transaction, params};

use crate::error::Error;
use crate::store::mac::fields_mac;
use crate::store::sqlite;

/// The MAC before the first row.
const GENESIS: &str = "genesis";

/// What a command records about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    /// The action, such as `keys.create`.
    pub action: String,
    /// What it acted on: a key id, a credential name; never a secret.
    pub target: String,
    /// How it ended, such as `ok`.
    pub outcome: String,
}

/// One stored audit row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    /// Position in the log, from 1.
    pub seq: i64,
    /// Unix seconds.
    pub at: i64,
    /// The OS user who ran the command.
    pub actor: String,
    /// The action.
    pub action: String,
    /// Its target.
    pub target: String,
    /// Its outcome.
    pub outcome: String,
    /// MAC of the previous row.
    pub prev_mac: String,
    /// This row's MAC.
    pub mac: String,
}

/// Why the chain does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuditBreak {
    /// A sequence number is missing: rows were deleted.
    #[error("audit row {expected} is missing (found {found} next): rows were deleted")]
    Gap {
        /// The expected sequence number.
        expected: i64,
        /// The one found instead.
        found: i64,
    },
    /// A row does not chain to the previous one: a row was inserted or deleted before it.
    #[error("audit row {seq} does not follow the row before it: rows were inserted or deleted")]
    Chain {
        /// The row.
        seq: i64,
    },
    /// A row's MAC does not match its fields: it was edited.
    #[error("audit row {seq} was edited")]
    Edited {
        /// The row.
        seq: i64,
    },
}

fn mac(key: &[u8], prev: &str, r: &AuditRecord) -> String {
    let (seq, at) = (r.seq.to_string(), r.at.to_string());
    fields_mac(
        key,
        b"krouter-audit-v1\0",
        &[prev, &seq, &at, &r.actor, &r.action, &r.target, &r.outcome],
    )
}

pub(crate) fn list(conn: &Connection, path: &Path) -> Result<Vec<AuditRecord>, Error> {
    let mut stmt = conn
        .prepare(
            "SELECT seq, at, actor, action, target, outcome, prev_mac, mac FROM audit ORDER BY seq",
        )
        .map_err(|e| sqlite(path, "read the audit log", e))?;
    let rows = stmt
        .query_map([], |r| {
            Ok(AuditRecord {
                seq: r.get(0)?,
                at: r.get(1)?,
                actor: r.get(2)?,
                action: r.get(3)?,
                target: r.get(4)?,
                outcome: r.get(5)?,
                prev_mac: r.get(6)?,
                mac: r.get(7)?,
            })
        })
        .map_err(|e| sqlite(path, "read the audit log", e))?;
    rows.collect::<Result<_, _>>()
        .map_err(|e| sqlite(path, "read the audit log", e))
}

pub(crate) fn append(
    tx: &Transaction<'_>,
    path: &Path,
    key: &[u8],
    at: i64,
    actor: &str,
    entry: &AuditEntry,
) -> Result<(), Error> {
    let last: Option<(i64, String)> = tx
        .query_row(
            "SELECT seq, mac FROM audit ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .map(Some)
        .or_else(|e| match e {
            rusqlite::Error::QueryReturnedNoRows => Ok(None),
            other => Err(other),
        })
        .map_err(|e| sqlite(path, "read the audit log", e))?;
    let (seq, prev_mac) = last.map_or((1, GENESIS.to_owned()), |(s, m)| (s + 1, m));
    let mut record = AuditRecord {
        seq,
        at,
        actor: actor.to_owned(),
        action: entry.action.clone(),
        target: entry.target.clone(),
        outcome: entry.outcome.clone(),
        prev_mac,
        mac: String::new(),
    };
    record.mac = mac(key, &record.prev_mac, &record);
    tx.execute(
        "INSERT INTO audit (seq, at, actor, action, target, outcome, prev_mac, mac)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            record.seq,
            record.at,
            record.actor,
            record.action,
            record.target,
            record.outcome,
            record.prev_mac,
            record.mac
        ],
    )
    .map_err(|e| sqlite(path, "append to the audit log", e))?;
    Ok(())
}

/// Walks the chain; returns the number of rows, or the first break.
pub(crate) fn verify(conn: &Connection, path: &Path, key: &[u8]) -> Result<usize, Error> {
    let rows = list(conn, path)?;
    let mut prev = GENESIS.to_owned();
    for (i, row) in rows.iter().enumerate() {
        let expected = i64::try_from(i).unwrap_or(i64::MAX) + 1;
        let broken = if row.seq != expected {
            Some(AuditBreak::Gap {
                expected,
                found: row.seq,
            })
        } else if row.prev_mac != prev {
            Some(AuditBreak::Chain { seq: row.seq })
        } else if mac(key, &row.prev_mac, row) != row.mac {
            Some(AuditBreak::Edited { seq: row.seq })
        } else {
            None
        };
        if let Some(what) = broken {
            return Err(Error::Audit {
                path: path.to_owned(),
                what,
            });
        }
        prev.clone_from(&row.mac);
    }
    Ok(rows.len())
}
