//! Provider credentials: sealed per field with AES-256-GCM, bound to their row, with a short
//! keyed fingerprint so operators can tell two values apart without seeing either.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ring::hmac;
use rusqlite::{Connection, OptionalExtension as _, params};
use zeroize::Zeroizing;

use crate::error::Error;
use crate::secret::ProviderCredential;
use crate::store::envelope::{self, Aad};
use crate::store::kdf::DataKey;
use crate::store::{StoreError, WriteTx, sqlite};

/// Largest credential accepted (provider keys are under 200 bytes; some tokens are longer).
pub const MAX_CREDENTIAL_BYTES: usize = 16 * 1024;

/// Every credential sealed as stored, with the data key to open them: built by
/// [`crate::store::StoreReader::vault`]. Opening decrypts one value for one use; nothing is
/// kept in the clear between uses.
pub struct CredentialVault {
    path: PathBuf,
    key: Arc<DataKey>,
    sealed: HashMap<String, (String, String)>,
}

/// What a credential is for: the kind of provider it authenticates to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialKind {
    /// An OpenAI API key.
    OpenAi,
    /// An Anthropic API key.
    Anthropic,
    /// A key for an OpenAI-compatible server.
    OpenAiCompatible,
    /// Anything else.
    Generic,
}

/// A stored credential, without its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialInfo {
    /// Its name, as the policy refers to it.
    pub name: String,
    /// What it is for.
    pub kind: CredentialKind,
    /// A short keyed hash of the value: equal values have equal fingerprints.
    pub fingerprint: String,
    /// When it was first set, unix seconds.
    pub created_at: i64,
    /// When it was last set, unix seconds.
    pub updated_at: i64,
}

impl CredentialKind {
    /// The stored and displayed name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OpenAi => "openai",
            Self::Anthropic => "anthropic",
            Self::OpenAiCompatible => "openai-compatible",
            Self::Generic => "generic",
        }
    }

    /// The kind named `text`, if any.
    pub fn parse(text: &str) -> Option<Self> {
        [
            Self::OpenAi,
            Self::Anthropic,
            Self::OpenAiCompatible,
            Self::Generic,
        ]
        .into_iter()
        .find(|k| k.as_str() == text)
    }
}

/// The row identity a credential's ciphertext is bound to: its name and its kind, so that
/// neither can be changed without the value failing to decrypt.
fn row_id(name: &str, kind: &str) -> String {
    format!("{name}\u{0}{kind}")
}

fn aad(row: &str) -> Aad<'_> {
    Aad::new("credentials", "value", row)
}

/// `fp_` + 12 hex digits of HMAC-SHA256(audit key, domain ‖ value): not reversible, and
/// stable across `store rekey`.
pub(crate) fn fingerprint(mac_key: &[u8], value: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, mac_key);
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(b"krouter-credential-fingerprint-v1\0");
    ctx.update(value);
    let tag = ctx.sign();
    let hex: String = tag
        .as_ref()
        .iter()
        .take(6)
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("fp_{hex}")
}

pub(crate) fn list(conn: &Connection, path: &Path) -> Result<Vec<CredentialInfo>, Error> {
    let mut stmt = conn
        .prepare(
            "SELECT name, kind, fingerprint, created_at, updated_at FROM credentials ORDER BY name",
        )
        .map_err(|e| sqlite(path, "read the credentials", e))?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
            ))
        })
        .map_err(|e| sqlite(path, "read the credentials", e))?;
    let mut out = Vec::new();
    for row in rows {
        let (name, kind, fingerprint, created_at, updated_at) =
            row.map_err(|e| sqlite(path, "read the credentials", e))?;
        out.push(CredentialInfo {
            name,
            kind: CredentialKind::parse(&kind)
                .ok_or_else(|| crate::store::damaged(path, "a credential's kind is unknown"))?,
            fingerprint,
            created_at,
            updated_at,
        });
    }
    Ok(out)
}

pub(crate) fn get(
    conn: &Connection,
    path: &Path,
    key: &DataKey,
    name: &str,
) -> Result<ProviderCredential, Error> {
    let found: Option<(String, String)> = conn
        .query_row(
            "SELECT kind, value FROM credentials WHERE name = ?1",
            params![name],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(|e| sqlite(path, "read the credential", e))?;
    let Some((kind, sealed)) = found else {
        return Err(StoreError::NotFound {
            what: "credential",
            name: name.to_owned(),
        }
        .into());
    };
    let plain = open(path, key, name, &kind, &sealed)?;
    Ok(ProviderCredential::from_checked(plain))
}

fn open(
    path: &Path,
    key: &DataKey,
    name: &str,
    kind: &str,
    sealed: &str,
) -> Result<Zeroizing<Vec<u8>>, Error> {
    envelope::open(key, &aad(&row_id(name, kind)), sealed).map_err(|_| {
        StoreError::Envelope {
            path: path.to_owned(),
            table: "credentials",
            column: "value",
            row: name.to_owned(),
        }
        .into()
    })
}

pub(crate) fn vault(
    conn: &Connection,
    path: &Path,
    key: &Arc<DataKey>,
) -> Result<CredentialVault, Error> {
    let sealed = sealed_rows(conn, path)?
        .into_iter()
        .map(|(name, kind, value)| (name, (kind, value)))
        .collect();
    Ok(CredentialVault {
        path: path.to_owned(),
        key: Arc::clone(key),
        sealed,
    })
}

// === impl CredentialVault ===

impl CredentialVault {
    /// Decrypts credential `name` for one use.
    pub fn open(&self, name: &str) -> Result<ProviderCredential, Error> {
        let Some((kind, sealed)) = self.sealed.get(name) else {
            return Err(StoreError::NotFound {
                what: "credential",
                name: name.to_owned(),
            }
            .into());
        };
        let plain = open(&self.path, &self.key, name, kind, sealed)?;
        Ok(ProviderCredential::from_checked(plain))
    }

    /// The kind credential `name` was stored as, if it exists.
    pub fn kind(&self, name: &str) -> Option<CredentialKind> {
        self.sealed
            .get(name)
            .and_then(|(kind, _)| CredentialKind::parse(kind))
    }

    /// Whether credential `name` exists.
    pub fn contains(&self, name: &str) -> bool {
        self.sealed.contains_key(name)
    }
}

impl krouter_policy::CredentialNames for CredentialVault {
    fn contains(&self, name: &str) -> bool {
        self.sealed.contains_key(name)
    }
}

impl fmt::Debug for CredentialVault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CredentialVault")
            .field("credentials", &self.sealed.len())
            .finish_non_exhaustive()
    }
}

/// `(name, kind, sealed value)` of every credential.
fn sealed_rows(conn: &Connection, path: &Path) -> Result<Vec<(String, String, String)>, Error> {
    let mut stmt = conn
        .prepare("SELECT name, kind, value FROM credentials ORDER BY name")
        .map_err(|e| sqlite(path, "read the credentials", e))?;
    let rows = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .map_err(|e| sqlite(path, "read the credentials", e))?;
    rows.collect::<Result<_, _>>()
        .map_err(|e| sqlite(path, "read the credentials", e))
}

/// Decrypts every credential once; returns how many.
pub(crate) fn verify_all(conn: &Connection, path: &Path, key: &DataKey) -> Result<usize, Error> {
    let rows = sealed_rows(conn, path)?;
    for (name, kind, sealed) in &rows {
        if CredentialKind::parse(kind).is_none() {
            return Err(crate::store::damaged(
                path,
                &format!("credential {name} has an unknown kind"),
            ));
        }
        open(path, key, name, kind, sealed)?;
    }
    Ok(rows.len())
}

/// Re-seals every credential under `next`; returns how many.
pub(crate) fn reseal_all(tx: &mut WriteTx<'_>, next: &DataKey) -> Result<usize, Error> {
    let rows = sealed_rows(&tx.tx, tx.path)?;
    for (name, kind, sealed) in &rows {
        let plain = open(tx.path, tx.key, name, kind, sealed)?;
        let resealed = envelope::seal(next, &aad(&row_id(name, kind)), &plain)
            .map_err(|_| crate::store::crypto("could not re-encrypt a credential"))?;
        tx.tx
            .execute(
                "UPDATE credentials SET value = ?2 WHERE name = ?1",
                params![name, resealed],
            )
            .map_err(|e| sqlite(tx.path, "re-encrypt a credential", e))?;
    }
    Ok(rows.len())
}

impl WriteTx<'_> {
    /// Stores (or replaces) credential `name`; returns its fingerprint.
    pub fn set_credential(
        &mut self,
        name: &str,
        kind: CredentialKind,
        value: &[u8],
    ) -> Result<String, Error> {
        let sealed = envelope::seal(self.key, &aad(&row_id(name, kind.as_str())), value)
            .map_err(|_| crate::store::crypto("could not encrypt the credential"))?;
        let fp = fingerprint(self.mac_key, value);
        self.tx
            .execute(
                "INSERT INTO credentials (name, kind, value, fingerprint, created_at, updated_at)
                 VALUES (?1, ?5, ?2, ?3, ?4, ?4)
                 ON CONFLICT(name) DO UPDATE SET kind = ?5, value = ?2, fingerprint = ?3, updated_at = ?4",
                params![name, sealed, fp, self.now, kind.as_str()],
            )
            .map_err(|e| sqlite(self.path, "store the credential", e))?;
        Ok(fp)
    }

    /// Removes credential `name`.
    pub fn remove_credential(&mut self, name: &str) -> Result<(), Error> {
        let n = self
            .tx
            .execute("DELETE FROM credentials WHERE name = ?1", params![name])
            .map_err(|e| sqlite(self.path, "remove the credential", e))?;
        if n == 0 {
            return Err(StoreError::NotFound {
                what: "credential",
                name: name.to_owned(),
            }
            .into());
        }
        Ok(())
    }
}
