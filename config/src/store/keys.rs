//! API key records: public id, HMAC digest, label, group and dates. The key itself is never
//! stored; only `HMAC-SHA256(API_KEY_SECRET, key)`.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension as _, params};

use crate::apikey::{KeyDigest, KeyId};
use crate::error::Error;
use crate::store::mac::fields_mac;
use crate::store::{StoreError, WriteTx, damaged, sqlite};

/// One API key as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyRecord {
    /// Public id, shown in lists and logs.
    pub id: KeyId,
    /// HMAC digest of the key.
    pub digest: KeyDigest,
    /// Operator's label.
    pub label: String,
    /// The policy group the key belongs to.
    pub group: String,
    /// Creation time, unix seconds.
    pub created_at: i64,
    /// Expiry, unix seconds, if any.
    pub expires_at: Option<i64>,
    /// Revocation time, unix seconds, if revoked.
    pub revoked_at: Option<i64>,
}

impl ApiKeyRecord {
    /// Whether the key may be used at `now`.
    pub fn is_active(&self, now: i64) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|t| now < t)
    }
}

/// The row's MAC under the store's audit key: every field, length-prefixed.
fn row_mac(mac_key: &[u8], r: &ApiKeyRecord) -> String {
    let opt = |v: Option<i64>| v.map_or_else(|| "-".to_owned(), |t| t.to_string());
    let (digest, created, expires, revoked) = (
        r.digest.to_hex(),
        r.created_at.to_string(),
        opt(r.expires_at),
        opt(r.revoked_at),
    );
    fields_mac(
        mac_key,
        b"krouter-api-key-row-v1\0",
        &[
            r.id.as_str(),
            &digest,
            &r.label,
            &r.group,
            &created,
            &expires,
            &revoked,
        ],
    )
}

/// Every key record, each checked against its MAC.
pub(crate) fn list(
    conn: &Connection,
    path: &Path,
    mac_key: &[u8],
) -> Result<Vec<ApiKeyRecord>, Error> {
    let mut stmt = conn
        .prepare(
            "SELECT id, digest, label, key_group, created_at, expires_at, revoked_at, mac
             FROM api_keys ORDER BY created_at, id",
        )
        .map_err(|e| sqlite(path, "read the API keys", e))?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
                r.get::<_, String>(7)?,
            ))
        })
        .map_err(|e| sqlite(path, "read the API keys", e))?;
    let mut out = Vec::new();
    for row in rows {
        let (id, digest, label, group, created_at, expires_at, revoked_at, mac) =
            row.map_err(|e| sqlite(path, "read the API keys", e))?;
        let tampered = || StoreError::KeyTampered {
            path: path.to_owned(),
            id: id.clone(),
        };
        let record = ApiKeyRecord {
            id: KeyId::parse(&id).map_err(|_| tampered())?,
            digest: KeyDigest::from_hex(&digest).map_err(|_| tampered())?,
            label,
            group,
            created_at,
            expires_at,
            revoked_at,
        };
        let expected = row_mac(mac_key, &record);
        if !bool::from(subtle::ConstantTimeEq::ct_eq(
            expected.as_bytes(),
            mac.as_bytes(),
        )) {
            return Err(tampered().into());
        }
        out.push(record);
    }
    Ok(out)
}

impl WriteTx<'_> {
    /// Inserts a new key record.
    pub fn insert_key(&mut self, record: &ApiKeyRecord) -> Result<(), Error> {
        self.tx
            .execute(
                "INSERT INTO api_keys (id, digest, label, key_group, created_at, expires_at, revoked_at, mac)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    record.id.as_str(),
                    record.digest.to_hex(),
                    record.label,
                    record.group,
                    record.created_at,
                    record.expires_at,
                    record.revoked_at,
                    row_mac(self.mac_key, record)
                ],
            )
            .map_err(|e| sqlite(self.path, "store the API key", e))?;
        Ok(())
    }

    /// The record of key `id`.
    pub fn key(&mut self, id: &str) -> Result<ApiKeyRecord, Error> {
        let found: Option<String> = self
            .tx
            .query_row("SELECT id FROM api_keys WHERE id = ?1", params![id], |r| {
                r.get(0)
            })
            .optional()
            .map_err(|e| sqlite(self.path, "read the API key", e))?;
        let Some(found) = found else {
            return Err(StoreError::NotFound {
                what: "API key",
                name: id.to_owned(),
            }
            .into());
        };
        list(&self.tx, self.path, self.mac_key)?
            .into_iter()
            .find(|r| r.id.as_str() == found)
            .ok_or_else(|| damaged(self.path, "an API key vanished inside a transaction"))
    }

    /// Marks key `id` revoked now. Revoking twice keeps the first time.
    pub fn revoke_key(&mut self, id: &str) -> Result<(), Error> {
        let mut record = self.key(id)?;
        record.revoked_at = record.revoked_at.or(Some(self.now));
        self.rewrite_key(&record)
    }

    /// Sets key `id` to expire at `at` (unix seconds), unless it already expires sooner.
    pub fn expire_key(&mut self, id: &str, at: i64) -> Result<(), Error> {
        let mut record = self.key(id)?;
        record.expires_at = Some(record.expires_at.map_or(at, |t| t.min(at)));
        self.rewrite_key(&record)
    }

    fn rewrite_key(&mut self, record: &ApiKeyRecord) -> Result<(), Error> {
        self.tx
            .execute(
                "UPDATE api_keys SET expires_at = ?2, revoked_at = ?3, mac = ?4 WHERE id = ?1",
                params![
                    record.id.as_str(),
                    record.expires_at,
                    record.revoked_at,
                    row_mac(self.mac_key, record)
                ],
            )
            .map_err(|e| sqlite(self.path, "update the API key", e))?;
        Ok(())
    }
}
