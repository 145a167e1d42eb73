//! `krouter-admin keys create|list|revoke|rotate`. A key is shown once, at creation; the
//! store keeps only its HMAC digest.

use std::time::Duration;

use krouter_config::apikey::{ApiKey, KeyDigest, KeyId};
use krouter_config::fs::{self, PRIVATE_FILE};
use krouter_config::store::{ApiKeyRecord, now};

use super::entry;

use crate::cli::{KeyIdArg, KeysCreateArgs, KeysRotateArgs};
use crate::context::{Context, StoredNames};
use crate::error::Error;
use crate::output::{KeyRow, Outcome, ShownOnce, time};

/// Longest label.
const MAX_LABEL: usize = 128;

pub(crate) fn create(ctx: &Context<'_>, args: &KeysCreateArgs) -> Result<Outcome, Error> {
    check_label(&args.label)?;
    let lifetime = args.expires.as_deref().map(duration).transpose()?;
    let secret = ctx.api_key_secret()?;
    let mut writer = ctx.writer()?;
    let names = StoredNames(
        writer
            .reader_view()
            .credentials()?
            .into_iter()
            .map(|c| c.name)
            .collect(),
    );
    let policy = ctx.policy(&names)?;
    if policy.access().group(&args.group).is_none() {
        return Err(Error::UnknownGroup {
            group: args.group.clone(),
            known: policy
                .access()
                .groups()
                .iter()
                .map(|g| g.name().to_owned())
                .collect(),
        });
    }
    let key = ApiKey::generate().map_err(Error::Generate)?;
    let id = KeyId::generate().map_err(Error::Generate)?;
    let now = now();
    let record = ApiKeyRecord {
        id: id.clone(),
        digest: KeyDigest::of(&secret, &key),
        label: args.label.clone(),
        group: args.group.clone(),
        created_at: now,
        expires_at: lifetime.map(|d| now.saturating_add(secs(d))),
        revoked_at: None,
    };
    let entry = entry("keys.create", id.as_str());
    with_out_file(args.out.as_deref(), &key, || {
        writer.transaction(&entry, |tx| tx.insert_key(&record))
    })?;
    Ok(Outcome::ApiKeyCreated {
        key: row(&record, now),
        secret: args.out.is_none().then(|| ShownOnce(key)),
        written_to: args.out.clone(),
        replaces: None,
    })
}

pub(crate) fn list(ctx: &Context<'_>) -> Result<Outcome, Error> {
    let writer = ctx.writer()?;
    let now = now();
    let keys = writer
        .reader_view()
        .api_keys()?
        .iter()
        .map(|r| row(r, now))
        .collect();
    Ok(Outcome::Keys { keys })
}

pub(crate) fn revoke(ctx: &Context<'_>, args: &KeyIdArg) -> Result<Outcome, Error> {
    key_id(&args.id)?;
    let mut writer = ctx.writer()?;
    let record = writer.transaction(&entry("keys.revoke", &args.id), |tx| {
        tx.revoke_key(&args.id)?;
        tx.key(&args.id)
    })?;
    Ok(Outcome::KeyRevoked {
        key: row(&record, now()),
    })
}

pub(crate) fn rotate(ctx: &Context<'_>, args: &KeysRotateArgs) -> Result<Outcome, Error> {
    key_id(&args.id)?;
    let grace = duration(&args.grace)?;
    let secret = ctx.api_key_secret()?;
    let mut writer = ctx.writer()?;
    let key = ApiKey::generate().map_err(Error::Generate)?;
    let id = KeyId::generate().map_err(Error::Generate)?;
    let target = format!("{} -> {}", args.id, id);
    let (record, old) = with_out_file(args.out.as_deref(), &key, || {
        writer.transaction(&entry("keys.rotate", &target), |tx| {
            let old = tx.key(&args.id)?;
            if !old.is_active(tx.now()) {
                return Err(krouter_config::store::StoreError::NotFound {
                    what: "active API key",
                    name: args.id.clone(),
                }
                .into());
            }
            let record = ApiKeyRecord {
                id: id.clone(),
                digest: KeyDigest::of(&secret, &key),
                label: old.label.clone(),
                group: old.group,
                created_at: tx.now(),
                // The new key gets the old one's lifetime, counted from now.
                expires_at: old
                    .expires_at
                    .map(|t| tx.now().saturating_add(t.saturating_sub(old.created_at))),
                revoked_at: None,
            };
            tx.insert_key(&record)?;
            tx.expire_key(&args.id, tx.now().saturating_add(secs(grace)))?;
            Ok((record, tx.key(&args.id)?))
        })
    })?;
    let now = now();
    Ok(Outcome::ApiKeyCreated {
        key: row(&record, now),
        secret: args.out.is_none().then(|| ShownOnce(key)),
        written_to: args.out.clone(),
        replaces: Some(row(&old, now)),
    })
}

/// Longest key lifetime or grace period: ten years.
const MAX_DURATION: Duration = Duration::from_secs(10 * 366 * 86_400);

/// A duration such as `90d`, `24h`, `30m` or `0s`, at most ten years.
pub(crate) fn duration(text: &str) -> Result<Duration, Error> {
    let d = humantime::parse_duration(text).map_err(|_| {
        Error::Usage(format!(
            "{text:?} is not a duration: use a number and a unit, such as 90d, 24h, 30m or 0s"
        ))
    })?;
    if d > MAX_DURATION {
        return Err(Error::Usage(format!(
            "{text:?} is longer than ten years; rotate keys more often than that"
        )));
    }
    Ok(d)
}

/// A key id argument, checked before any lookup (so a pasted key is never echoed back).
fn key_id(text: &str) -> Result<KeyId, Error> {
    KeyId::parse(text).map_err(|_| {
        Error::Usage(
            "not a key id: ids look like kid_ followed by 12 letters and digits (see `keys list`)"
                .to_owned(),
        )
    })
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

fn check_label(label: &str) -> Result<(), Error> {
    let ok = !label.trim().is_empty()
        && label.chars().count() <= MAX_LABEL
        && !label.chars().any(char::is_control);
    if ok {
        Ok(())
    } else {
        Err(Error::Usage(format!(
            "a label is 1-{MAX_LABEL} printable characters"
        )))
    }
}

/// Runs `commit` with the key written to `out` (a new 0600 file) first, removing the file
/// if the commit fails: a stored key always has its one copy, and a failed command leaves
/// no orphan file behind.
fn with_out_file<T>(
    out: Option<&std::path::Path>,
    key: &ApiKey,
    commit: impl FnOnce() -> Result<T, krouter_config::Error>,
) -> Result<T, Error> {
    if let Some(out) = out {
        fs::write_new(
            out,
            format!("{}\n", key.expose_secret()).as_bytes(),
            PRIVATE_FILE,
        )?;
    }
    commit().map_err(|e| {
        if let Some(out) = out {
            let _removed = std::fs::remove_file(out);
        }
        e.into()
    })
}

pub(crate) fn row(r: &ApiKeyRecord, now: i64) -> KeyRow {
    let status = if r.revoked_at.is_some() {
        "revoked"
    } else if r.expires_at.is_some_and(|t| now >= t) {
        "expired"
    } else {
        "active"
    };
    KeyRow {
        id: r.id.to_string(),
        label: r.label.clone(),
        group: r.group.clone(),
        created: time(r.created_at),
        expires: r.expires_at.map(time),
        revoked: r.revoked_at.map(time),
        status,
    }
}
