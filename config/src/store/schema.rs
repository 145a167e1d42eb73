//! The store's schema: migrations embedded from `migrations/store/` at build time, applied in
//! order by the writer, each in its own transaction; `PRAGMA user_version` records the last.

use std::path::Path;

use rusqlite::Connection;

use crate::error::Error;
use crate::store::{StoreError, sqlite};

/// `(version, SQL)` in order; version N is the N-th file.
const MIGRATIONS: &[(i64, &str)] = &[(1, include_str!("../../../migrations/store/0001_init.sql"))];

/// The newest schema version this build knows.
pub(crate) const KNOWN: i64 = 1;

/// The file's schema version.
pub(crate) fn version(conn: &Connection, path: &Path) -> Result<i64, Error> {
    conn.query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|e| sqlite(path, "read the schema version", e))
}

/// Refuses a store whose schema is not exactly the one this build knows.
pub(crate) fn check_current(conn: &Connection, path: &Path) -> Result<(), Error> {
    let found = version(conn, path)?;
    if found == 0 {
        return Err(crate::store::damaged(
            path,
            "the file is empty or not a krouter store; restore a backup",
        ));
    }
    if found != KNOWN {
        return Err(StoreError::Schema {
            path: path.to_owned(),
            found,
            known: KNOWN,
        }
        .into());
    }
    Ok(())
}

/// Applies every store migration newer than the file's version. A file newer than this
/// build is refused rather than touched.
pub(crate) fn migrate(conn: &Connection, path: &Path) -> Result<(), Error> {
    apply(conn, path, MIGRATIONS, KNOWN)
}

/// Applies `migrations` (`(version, SQL)`, in order) newer than the file's version, each in
/// its own transaction; shared by the store and the state database.
pub(crate) fn apply(
    conn: &Connection,
    path: &Path,
    migrations: &[(i64, &str)],
    known: i64,
) -> Result<(), Error> {
    let found = version(conn, path)?;
    if found > known {
        return Err(StoreError::Schema {
            path: path.to_owned(),
            found,
            known,
        }
        .into());
    }
    for (number, sql) in migrations.iter().filter(|(n, _)| *n > found) {
        let tx = conn
            .unchecked_transaction()
            .map_err(|e| sqlite(path, "begin a migration", e))?;
        tx.execute_batch(sql)
            .map_err(|e| sqlite(path, "apply a migration", e))?;
        tx.pragma_update(None, "user_version", number)
            .map_err(|e| sqlite(path, "record the schema version", e))?;
        tx.commit()
            .map_err(|e| sqlite(path, "commit a migration", e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_numbered_in_order_and_known_is_the_last() {
        for (i, (n, _)) in MIGRATIONS.iter().enumerate() {
            assert_eq!(*n, i64::try_from(i).unwrap() + 1);
        }
        assert_eq!(MIGRATIONS.last().unwrap().0, KNOWN);
    }

    #[test]
    fn a_newer_or_older_schema_is_refused() {
        let conn = Connection::open_in_memory().unwrap();
        let path = Path::new("mem");
        assert!(matches!(
            check_current(&conn, path),
            Err(Error::Store(StoreError::Damaged { .. }))
        ));
        migrate(&conn, path).unwrap();
        check_current(&conn, path).unwrap();
        migrate(&conn, path).unwrap();
        conn.pragma_update(None, "user_version", KNOWN + 1).unwrap();
        assert!(matches!(
            migrate(&conn, path),
            Err(Error::Store(StoreError::Schema { found, .. })) if found == KNOWN + 1
        ));
    }
}
