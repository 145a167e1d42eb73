//! The encrypted store, `db/store.sqlite`: API key digests, encrypted provider credentials and
//! the audit log.
//!
//! Two handles with different powers. [`StoreReader`] opens the file strictly read-only (the
//! proxy, sandboxed in a directory it cannot write); [`StoreWriter`] is the admin's, and every
//! change goes through [`StoreWriter::transaction`], one `BEGIN IMMEDIATE` transaction per
//! command that also appends the command's audit row, so a failed or killed command leaves
//! the store exactly as it was. Both check the schema version and the storage key's check
//! value when they open, so a wrong key is a clear error at once, never a confusing failure
//! later.
//!
//! The journal is WAL with a persistent WAL file (`SQLITE_FCNTL_PERSIST_WAL`) and a size
//! limit, so the `-wal` and `-shm` files stay in place after the admin exits and a reader
//! without write permission on the directory can still open the store.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OpenFlags, TransactionBehavior, params};
use zeroize::Zeroizing;

use crate::error::Error;
use crate::fs::{PRIVATE_FILE, write_new};
use crate::secret::StorageKey;

pub mod audit;
pub mod credentials;
pub mod envelope;
pub mod kdf;
pub mod keys;
mod mac;
pub(crate) mod schema;

pub use audit::{AuditEntry, AuditRecord};
pub use credentials::{CredentialInfo, CredentialKind, CredentialVault};
pub use keys::ApiKeyRecord;
/// The store schema version this build reads and writes.
pub const SCHEMA_VERSION: i64 = schema::KNOWN;

use kdf::{DataKey, InstallSalt, KeyCheckValue};

/// How long a command waits for another admin command to finish before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest WAL file kept between checkpoints.
const JOURNAL_SIZE_LIMIT: i64 = 4 * 1024 * 1024;

/// What went wrong in the store. Messages name the operation and the row, never a value.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// SQLite refused an operation.
    #[error("{path}: could not {action}")]
    Sqlite {
        /// The store file.
        path: PathBuf,
        /// What was attempted.
        action: &'static str,
        /// SQLite's reason.
        #[source]
        source: rusqlite::Error,
    },
    /// No store at the path.
    #[error("{path}: no store here; run `krouter-admin init` (or `store migrate` on a copy)")]
    Missing {
        /// The expected store file.
        path: PathBuf,
    },
    /// The schema version is not one this build knows.
    #[error(
        "{path}: the store's schema version is {found}, this build knows {known}; run `krouter-admin store migrate` with a matching krouter-admin"
    )]
    Schema {
        /// The store file.
        path: PathBuf,
        /// `PRAGMA user_version` of the file.
        found: i64,
        /// The newest version this build knows.
        known: i64,
    },
    /// The storage key does not derive the key that made this store.
    #[error("{path}: the storage key does not match this store (STORAGE_ENCRYPTION_KEY is wrong)")]
    WrongKey {
        /// The store file.
        path: PathBuf,
    },
    /// A required install value is missing or malformed.
    #[error("{path}: the store is damaged: {what}")]
    Damaged {
        /// The store file.
        path: PathBuf,
        /// What is missing or malformed.
        what: String,
    },
    /// A sealed field does not decrypt for its row.
    #[error(
        "{path}: {table}.{column} of row {row} does not decrypt: it was edited, moved or sealed under another key"
    )]
    Envelope {
        /// The store file.
        path: PathBuf,
        /// The table.
        table: &'static str,
        /// The column.
        column: &'static str,
        /// The row's identity.
        row: String,
    },
    /// A named row does not exist.
    #[error("no {what} named {name}")]
    NotFound {
        /// What kind of row.
        what: &'static str,
        /// Its name or id.
        name: String,
    },
    /// A named row already exists.
    #[error("a {what} named {name} already exists")]
    Exists {
        /// What kind of row.
        what: &'static str,
        /// Its name or id.
        name: String,
    },
    /// The store was re-keyed by another command after this one opened it.
    #[error(
        "{path}: the store was re-keyed while this command ran; nothing was changed, run it again"
    )]
    Rekeyed {
        /// The store file.
        path: PathBuf,
    },
    /// An API key row does not match its MAC: it was edited outside krouter-admin.
    #[error(
        "{path}: API key {id} was edited outside krouter-admin (its row does not match its MAC)"
    )]
    KeyTampered {
        /// The store file.
        path: PathBuf,
        /// The key's id as stored.
        id: String,
    },
    /// Cryptography failed (the system random generator, most likely).
    #[error("{what}")]
    Crypto {
        /// What failed.
        what: &'static str,
    },
}

/// The read-only handle: the proxy's, and the admin's for reports.
pub struct StoreReader {
    conn: Connection,
    path: PathBuf,
    key: Arc<DataKey>,
    mac_key: Zeroizing<Vec<u8>>,
}

/// The admin's handle: the only writer.
pub struct StoreWriter {
    conn: Connection,
    path: PathBuf,
    key: DataKey,
    mac_key: Zeroizing<Vec<u8>>,
    actor: String,
}

/// One open write transaction, handed to a command's closure.
pub struct WriteTx<'c> {
    tx: rusqlite::Transaction<'c>,
    path: &'c Path,
    key: &'c DataKey,
    mac_key: &'c [u8],
    now: i64,
}

// === impl StoreReader ===

impl StoreReader {
    /// Opens `path` read-only, checks the schema and the storage key.
    pub fn open(path: &Path, storage_key: &StorageKey) -> Result<Self, Error> {
        require_exists(path)?;
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags)
            .map_err(|e| sqlite(path, "open the store read-only", e))?;
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(|e| sqlite(path, "set the busy timeout", e))?;
        schema::check_current(&conn, path)?;
        let key = unlock(&conn, path, storage_key)?;
        let mac_key = load_mac_key(&conn, path, &key)?;
        Ok(Self {
            conn,
            path: path.to_owned(),
            key: Arc::new(key),
            mac_key,
        })
    }

    /// Every credential, still sealed, with the key to open one at a time: the proxy's view,
    /// so that a value is decrypted only for the request that uses it.
    pub fn vault(&self) -> Result<CredentialVault, Error> {
        credentials::vault(&self.conn, &self.path, &self.key)
    }

    /// Fails with "wrong key" if the store was re-keyed since this reader opened it (its key
    /// check value no longer matches), so a long-lived reader notices `store rekey`.
    pub fn check_key(&self) -> Result<(), Error> {
        if key_matches(&self.conn, &self.path, &self.key)? {
            Ok(())
        } else {
            Err(StoreError::WrongKey {
                path: self.path.clone(),
            }
            .into())
        }
    }

    /// Every API key record, revoked and expired included. A row edited outside
    /// krouter-admin is an error, never a silently different key.
    pub fn api_keys(&self) -> Result<Vec<ApiKeyRecord>, Error> {
        keys::list(&self.conn, &self.path, &self.mac_key)
    }

    /// Names, dates and fingerprints of the stored credentials; no values.
    pub fn credentials(&self) -> Result<Vec<CredentialInfo>, Error> {
        credentials::list(&self.conn, &self.path)
    }

    /// The decrypted credential `name`, for one use.
    pub fn credential(&self, name: &str) -> Result<crate::secret::ProviderCredential, Error> {
        credentials::get(&self.conn, &self.path, &self.key, name)
    }

    /// The audit log, oldest first.
    pub fn audit(&self) -> Result<Vec<AuditRecord>, Error> {
        audit::list(&self.conn, &self.path)
    }

    /// SQLite's data version: changes whenever another connection commits.
    pub fn data_version(&self) -> Result<i64, Error> {
        self.conn
            .query_row("PRAGMA data_version", [], |r| r.get(0))
            .map_err(|e| sqlite(&self.path, "read the data version", e))
    }
}

// === impl StoreWriter ===

impl StoreWriter {
    /// Creates a new store at `path` (which must not exist): schema, install salt, key check
    /// value and audit MAC key, in one transaction.
    pub fn create(path: &Path, storage_key: &StorageKey, actor: &str) -> Result<Self, Error> {
        // Created empty at 0600 first, so the file is never readable by others.
        write_new(path, b"", PRIVATE_FILE)?;
        let result = Self::create_inner(path, storage_key, actor);
        if result.is_err() {
            for suffix in ["", "-wal", "-shm"] {
                let _removed = std::fs::remove_file(format!("{}{suffix}", path.display()));
            }
        }
        result
    }

    fn create_inner(path: &Path, storage_key: &StorageKey, actor: &str) -> Result<Self, Error> {
        let conn = open_rw(path, Fresh::Allowed)?;
        schema::migrate(&conn, path)?;
        let salt =
            InstallSalt::generate().map_err(|_| crypto("could not generate the install salt"))?;
        let key = DataKey::derive(storage_key, &salt)
            .map_err(|_| crypto("could not derive the data key"))?;
        let check = KeyCheckValue::of(&key);
        let mac_key = random_key()?;
        let sealed = envelope::seal(&key, &mac_key_aad(), &mac_key)
            .map_err(|_| crypto("could not seal the audit key"))?;
        let tx = conn
            .unchecked_transaction()
            .map_err(|e| sqlite(path, "begin a transaction", e))?;
        for (name, value) in [
            ("install_salt", salt.as_bytes().to_vec()),
            ("key_check", check.as_bytes().to_vec()),
            ("audit_key", sealed.into_bytes()),
        ] {
            tx.execute(
                "INSERT INTO meta (name, value) VALUES (?1, ?2)",
                params![name, value],
            )
            .map_err(|e| sqlite(path, "write the install values", e))?;
        }
        tx.commit()
            .map_err(|e| sqlite(path, "commit the new store", e))?;
        Ok(Self {
            conn,
            path: path.to_owned(),
            key,
            mac_key,
            actor: actor.to_owned(),
        })
    }

    /// Opens an existing store for writing; checks the schema and the storage key.
    pub fn open(path: &Path, storage_key: &StorageKey, actor: &str) -> Result<Self, Error> {
        require_exists(path)?;
        let conn = open_rw(path, Fresh::Refused)?;
        schema::check_current(&conn, path)?;
        let key = unlock(&conn, path, storage_key)?;
        let mac_key = load_mac_key(&conn, path, &key)?;
        Ok(Self {
            conn,
            path: path.to_owned(),
            key,
            mac_key,
            actor: actor.to_owned(),
        })
    }

    /// Applies pending migrations to an existing store after checking the storage key, and
    /// records them in the audit log; returns the (old, new) schema versions. An empty file
    /// or one that is not a krouter store is refused, not "migrated".
    pub fn migrate(
        path: &Path,
        storage_key: &StorageKey,
        actor: &str,
    ) -> Result<(i64, i64), Error> {
        require_exists(path)?;
        let conn = open_rw(path, Fresh::Refused)?;
        let before = schema::version(&conn, path)?;
        let key = unlock(&conn, path, storage_key)?;
        schema::migrate(&conn, path)?;
        let mac_key = load_mac_key(&conn, path, &key)?;
        let mut writer = Self {
            conn,
            path: path.to_owned(),
            key,
            mac_key,
            actor: actor.to_owned(),
        };
        let entry = AuditEntry {
            action: "store.migrate".to_owned(),
            target: format!("{before} -> {}", schema::KNOWN),
            outcome: "ok".to_owned(),
        };
        writer.transaction(&entry, |_| Ok(()))?;
        Ok((before, schema::KNOWN))
    }

    /// Runs `f` in one immediate transaction and appends `entry` to the audit log in the same
    /// transaction. Nothing is written unless both succeed.
    pub fn transaction<T>(
        &mut self,
        entry: &AuditEntry,
        f: impl FnOnce(&mut WriteTx<'_>) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| sqlite(&self.path, "begin a write transaction", e))?;
        // Another command may have re-keyed the store between our open and this lock; sealing
        // under the old data key now would make a field no key can open.
        if !key_matches(&tx, &self.path, &self.key)? {
            return Err(StoreError::Rekeyed {
                path: self.path.clone(),
            }
            .into());
        }
        let mut wtx = WriteTx {
            tx,
            path: &self.path,
            key: &self.key,
            mac_key: &self.mac_key,
            now: now(),
        };
        let value = f(&mut wtx)?;
        audit::append(&wtx.tx, wtx.path, wtx.mac_key, wtx.now, &self.actor, entry)?;
        wtx.tx
            .commit()
            .map_err(|e| sqlite(&self.path, "commit the transaction", e))?;
        Ok(value)
    }

    /// A read view over the same connection, for listing inside admin commands.
    pub fn reader_view(&self) -> ReaderView<'_> {
        ReaderView {
            conn: &self.conn,
            path: &self.path,
            key: &self.key,
            mac_key: &self.mac_key,
        }
    }

    /// Writes a consistent copy of the store to `out` (a new file, 0600), while others read.
    pub fn backup(&self, out: &Path) -> Result<(), Error> {
        write_new(out, b"", PRIVATE_FILE)?;
        let target = out.to_string_lossy().into_owned();
        let result = self
            .conn
            .execute("VACUUM INTO ?1", params![target])
            .map_err(|e| sqlite(&self.path, "write the backup", e));
        if let Err(e) = result {
            let _removed = std::fs::remove_file(out);
            return Err(e);
        }
        Ok(())
    }

    /// Re-encrypts every sealed field under `new_key` with a fresh salt, in one transaction
    /// that also appends `entry`. Returns how many credentials were re-encrypted.
    pub fn rekey(&mut self, new_key: &StorageKey, entry: &AuditEntry) -> Result<usize, Error> {
        let salt =
            InstallSalt::generate().map_err(|_| crypto("could not generate the install salt"))?;
        let next =
            DataKey::derive(new_key, &salt).map_err(|_| crypto("could not derive the data key"))?;
        let check = KeyCheckValue::of(&next);
        let sealed_mac = envelope::seal(&next, &mac_key_aad(), &self.mac_key)
            .map_err(|_| crypto("could not seal the audit key"))?;
        let count = self.transaction(entry, |tx| {
            let count = credentials::reseal_all(tx, &next)?;
            for (name, value) in [
                ("install_salt", salt.as_bytes().to_vec()),
                ("key_check", check.as_bytes().to_vec()),
                ("audit_key", sealed_mac.clone().into_bytes()),
            ] {
                tx.tx
                    .execute(
                        "UPDATE meta SET value = ?2 WHERE name = ?1",
                        params![name, value],
                    )
                    .map_err(|e| sqlite(tx.path, "write the install values", e))?;
            }
            Ok(count)
        })?;
        self.key = next;
        Ok(count)
    }

    /// The store's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Read access through the writer's connection.
pub struct ReaderView<'a> {
    conn: &'a Connection,
    path: &'a Path,
    key: &'a DataKey,
    mac_key: &'a [u8],
}

impl ReaderView<'_> {
    /// Every API key record; a tampered row is an error.
    pub fn api_keys(&self) -> Result<Vec<ApiKeyRecord>, Error> {
        keys::list(self.conn, self.path, self.mac_key)
    }

    /// Stored credentials, without values.
    pub fn credentials(&self) -> Result<Vec<CredentialInfo>, Error> {
        credentials::list(self.conn, self.path)
    }

    /// The audit log, oldest first.
    pub fn audit(&self) -> Result<Vec<AuditRecord>, Error> {
        audit::list(self.conn, self.path)
    }

    /// Checks the audit chain; the error names the first bad row.
    pub fn verify_audit(&self) -> Result<usize, Error> {
        audit::verify(self.conn, self.path, self.mac_key)
    }

    /// Decrypts every sealed field once; the error names the first that fails.
    pub fn verify_envelopes(&self) -> Result<usize, Error> {
        credentials::verify_all(self.conn, self.path, self.key)
    }
}

// === impl WriteTx ===

impl WriteTx<'_> {
    /// The transaction's timestamp (unix seconds), shared by every row it writes.
    pub fn now(&self) -> i64 {
        self.now
    }
}

/// Refuses a store path with no file behind it, before SQLite would create one.
fn require_exists(path: &Path) -> Result<(), Error> {
    if path.exists() {
        Ok(())
    } else {
        Err(StoreError::Missing {
            path: path.to_owned(),
        }
        .into())
    }
}

/// Whether `open_rw` may open a file that holds no krouter schema yet.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fresh {
    /// Only `create`: the file was just made empty.
    Allowed,
    /// Every other opener: an empty or foreign file is damaged, and is not touched.
    Refused,
}

/// Opens read-write with the pragmas every writer needs. Unless `fresh` allows it, a file
/// without a krouter schema is refused before anything is written to it.
fn open_rw(path: &Path, fresh: Fresh) -> Result<Connection, Error> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)
        .map_err(|e| sqlite(path, "open the store for writing", e))?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(|e| sqlite(path, "set the busy timeout", e))?;
    if fresh == Fresh::Refused && schema::version(&conn, path)? == 0 {
        return Err(damaged(
            path,
            "the file is empty or not a krouter store; restore a backup",
        ));
    }
    let mut persist: std::ffi::c_int = 1;
    conn.file_control(
        Some(rusqlite::MAIN_DB),
        rusqlite::FileControl::PersistWal(&mut persist),
    )
    .map_err(|e| sqlite(path, "keep the WAL file between runs", e))?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .map_err(|e| sqlite(path, "switch to WAL", e))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Damaged {
            path: path.to_owned(),
            what: format!("the journal mode is {mode}, not WAL"),
        }
        .into());
    }
    conn.execute_batch(&format!(
        "PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON; PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT};"
    ))
    .map_err(|e| sqlite(path, "set the store's pragmas", e))?;
    Ok(conn)
}

/// Derives the data key and checks it against the stored check value.
fn unlock(conn: &Connection, path: &Path, storage_key: &StorageKey) -> Result<DataKey, Error> {
    let salt = meta(conn, path, "install_salt")?;
    let salt = InstallSalt::from_bytes(&salt)
        .map_err(|_| damaged(path, "the install salt is malformed"))?;
    let key =
        DataKey::derive(storage_key, &salt).map_err(|_| crypto("could not derive the data key"))?;
    if !key_matches(conn, path, &key)? {
        return Err(StoreError::WrongKey {
            path: path.to_owned(),
        }
        .into());
    }
    Ok(key)
}

/// Whether `key` produces the key check value the store holds now.
fn key_matches(conn: &Connection, path: &Path, key: &DataKey) -> Result<bool, Error> {
    let stored = meta(conn, path, "key_check")?;
    let stored = KeyCheckValue::from_bytes(&stored)
        .map_err(|_| damaged(path, "the key check value is malformed"))?;
    Ok(KeyCheckValue::of(key).matches(&stored))
}

fn load_mac_key(
    conn: &Connection,
    path: &Path,
    key: &DataKey,
) -> Result<Zeroizing<Vec<u8>>, Error> {
    let sealed = meta(conn, path, "audit_key")?;
    let sealed =
        String::from_utf8(sealed).map_err(|_| damaged(path, "the audit key is malformed"))?;
    envelope::open(key, &mac_key_aad(), &sealed).map_err(|_| {
        StoreError::Envelope {
            path: path.to_owned(),
            table: "meta",
            column: "value",
            row: "audit_key".to_owned(),
        }
        .into()
    })
}

fn mac_key_aad() -> envelope::Aad<'static> {
    envelope::Aad::new("meta", "value", "audit_key")
}

fn meta(conn: &Connection, path: &Path, name: &str) -> Result<Vec<u8>, Error> {
    conn.query_row(
        "SELECT value FROM meta WHERE name = ?1",
        params![name],
        |r| r.get(0),
    )
    .map_err(|e| match e {
        rusqlite::Error::QueryReturnedNoRows => {
            damaged(path, &format!("the {name} value is missing"))
        }
        other => sqlite(path, "read the install values", other),
    })
}

fn random_key() -> Result<Zeroizing<Vec<u8>>, Error> {
    let mut bytes = Zeroizing::new(vec![0u8; 32]);
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| crypto("the system random generator failed"))?;
    Ok(bytes)
}

/// Unix seconds now.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

pub(crate) fn sqlite(path: &Path, action: &'static str, source: rusqlite::Error) -> Error {
    StoreError::Sqlite {
        path: path.to_owned(),
        action,
        source,
    }
    .into()
}

pub(crate) fn damaged(path: &Path, what: &str) -> Error {
    StoreError::Damaged {
        path: path.to_owned(),
        what: what.to_owned(),
    }
    .into()
}

pub(crate) fn crypto(what: &'static str) -> Error {
    StoreError::Crypto { what }.into()
}

#[cfg(test)]
mod tests;
