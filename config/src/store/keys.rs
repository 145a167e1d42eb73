//! API key records: public id, HMAC digest, label, group and dates. The key itself is never
//! stored; only `HMAC-SHA256(API_KEY_SECRET, key)`.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension as _, params};

use crate::apikey::{KeyDigest, KeyId};
use crate::error::Error;
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

pub(crate) fn list(conn: &Connection, path: &Path) -> Result<Vec<ApiKeyRecord>, Error> {
    let mut stmt = conn
        .prepare(
            "SELECT id, digest, label, key_group, created_at, expires_at, revoked_at
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
            ))
        })
        .map_err(|e| sqlite(path, "read the API keys", e))?;
    let mut out = Vec::new();
    for row in rows {
        let (id, digest, label, group, created_at, expires_at, revoked_at) =
            row.map_err(|e| sqlite(path, "read the API keys", e))?;
        out.push(ApiKeyRecord {
            id: KeyId::parse(&id).map_err(|_| damaged(path, "an API key id is malformed"))?,
            digest: KeyDigest::from_hex(&digest)
                .map_err(|_| damaged(path, "an API key digest is malformed"))?,
            label,
            group,
            created_at,
            expires_at,
            revoked_at,
        });
    }
    Ok(out)
}

impl WriteTx<'_> {
    /// Inserts a new key record.
    pub fn insert_key(&mut self, record: &ApiKeyRecord) -> Result<(), Error> {
        self.tx
            .execute(
                "INSERT INTO api_keys (id, digest, label, key_group, created_at, expires_at, revoked_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    record.id.as_str(),
                    record.digest.to_hex(),
                    record.label,
                    record.group,
                    record.created_at,
                    record.expires_at,
                    record.revoked_at
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
        list(&self.tx, self.path)?
            .into_iter()
            .find(|r| r.id.as_str() == found)
            .ok_or_else(|| damaged(self.path, "an API key vanished inside a transaction"))
    }

    /// Marks key `id` revoked now. Revoking twice keeps the first time.
    pub fn revoke_key(&mut self, id: &str) -> Result<(), Error> {
        self.key(id)?;
        self.tx
            .execute(
                "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, ?2) WHERE id = ?1",
                params![id, self.now],
            )
            .map_err(|e| sqlite(self.path, "revoke the API key", e))?;
        Ok(())
    }

    /// Sets key `id` to expire at `at` (unix seconds), unless it already expires sooner.
    pub fn expire_key(&mut self, id: &str, at: i64) -> Result<(), Error> {
        self.key(id)?;
        self.tx
            .execute(
                "UPDATE api_keys SET expires_at = MIN(COALESCE(expires_at, ?2), ?2) WHERE id = ?1",
                params![id, at],
            )
            .map_err(|e| sqlite(self.path, "set the API key's expiry", e))?;
        Ok(())
    }
}
