//! The proxy's state database, `state/state.sqlite`: the last accepted policy (to refuse
//! rollbacks across restarts) and, later, request metadata, lockout counters and breaker
//! state. Written only by the proxy; opened read-only by `krouter check` and admin reports.
//! Never holds a secret or any prompt or completion content.

use std::path::{Path, PathBuf};
use std::time::Duration;

use krouter_policy::{AcceptedPolicy, PolicyDigest, Serial};
use rusqlite::{Connection, OpenFlags, OptionalExtension as _, params};

use crate::error::Error;
use crate::fs::{PRIVATE_FILE, write_new};
use crate::store::{damaged, sqlite};

/// `(version, SQL)` in order.
const MIGRATIONS: &[(i64, &str)] = &[(1, include_str!("../../migrations/state/0001_init.sql"))];
/// The newest state schema this build knows.
const KNOWN: i64 = 1;

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
        conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;")
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
        if !path.exists() {
            return Ok(None);
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags)
            .map_err(|e| sqlite(path, "open the state database read-only", e))?;
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| sqlite(path, "read the schema version", e))?;
        if version == 0 {
            return Ok(None);
        }
        accepted(&conn, path)
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
}
