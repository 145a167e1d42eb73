//! `krouter-admin store migrate|verify|rekey|backup`.

use std::path::PathBuf;

use krouter_config::fs::{self, PRIVATE_FILE};
use krouter_config::secret::load::{self, Origin};
use krouter_config::secret::{self, SecretName};
use krouter_config::store::StoreWriter;
use zeroize::Zeroizing;

use crate::cli::{BackupArgs, RekeyArgs};
use crate::context::Context;
use crate::error::Error;
use crate::output::Outcome;
use crate::prompt;

/// Largest key file read.
const MAX_KEY_FILE: u64 = 4096;

pub(crate) fn migrate(ctx: &Context<'_>) -> Result<Outcome, Error> {
    let key = ctx.storage_key()?;
    let (from, to) = StoreWriter::migrate(&ctx.home.store_file(), &key, &ctx.actor())?;
    Ok(Outcome::Migrated { from, to })
}

pub(crate) fn verify(ctx: &Context<'_>) -> Result<Outcome, Error> {
    // Opening checks the schema version and the storage key.
    let writer = ctx.writer()?;
    let view = writer.reader_view();
    let credentials = view.verify_envelopes()?;
    let keys = view.api_keys()?.len();
    let audit_rows = view.verify_audit()?;
    Ok(Outcome::StoreVerified {
        schema: krouter_config::store::SCHEMA_VERSION,
        keys,
        credentials,
        audit_rows,
    })
}

pub(crate) fn rekey(ctx: &Context<'_>, args: &RekeyArgs) -> Result<Outcome, Error> {
    let mut writer = ctx.writer()?;
    let current = load::origin(SecretName::StorageKey, ctx.vars, &ctx.home.secrets_dir());
    if args.generate && !matches!(current, Origin::HomeFile(_)) {
        return Err(Error::Usage(
            "--generate writes the new key to secrets/storage.key, but this store's key comes from \
             STORAGE_ENCRYPTION_KEY or its _FILE; pipe the new key on stdin or give --new-key-file, \
             then update the variable"
                .to_owned(),
        ));
    }
    let (bytes, origin) = if args.generate {
        let text = secret::generate(SecretName::StorageKey)?;
        (
            Zeroizing::new(text.as_bytes().to_vec()),
            Origin::HomeFile(ctx.home.secret_file(SecretName::StorageKey)),
        )
    } else if let Some(path) = &args.new_key_file {
        let bytes = load::trimmed(fs::read_secret(path, MAX_KEY_FILE)?);
        (bytes, Origin::VariableFile(path.clone()))
    } else {
        let bytes = prompt::read_secret("new storage key: ")?;
        (bytes, Origin::Input)
    };
    let new_key = load::storage_key_from(bytes.clone(), origin)?;

    // When the key lives in the home, the new one is written beside it before the commit and
    // moved into place after: a crash leaves either the old key (store unchanged) or
    // storage.key.new (store re-keyed) — never a store no file can open.
    let key_file = match &current {
        Origin::HomeFile(path) => Some(path.clone()),
        Origin::Variable(_) | Origin::VariableFile(_) | Origin::Input => None,
    };
    let staged = key_file
        .as_ref()
        .map(|p| PathBuf::from(format!("{}.new", p.display())));
    // Held until the new key is in place: other commands wait instead of mistaking our staged
    // key for the leftover of a dead rekey. `writer()` above already finished or cleared any
    // such leftover; a rekey that slipped in since then makes our commit fail (the
    // transaction re-checks the key) and changes nothing.
    let _lock = fs::FileLock::acquire(&ctx.home.secrets_dir().join("storage.key.lock"))?;
    if let Some(staged) = &staged {
        fs::write_new(staged, &bytes, PRIVATE_FILE)?;
        fs::sync_dir(&ctx.home.secrets_dir())?;
    }
    let count = match writer.rekey(&new_key, &super::entry("store.rekey", "storage key")) {
        Ok(count) => count,
        Err(e) => {
            if let Some(staged) = &staged {
                let _removed = std::fs::remove_file(staged);
            }
            return Err(e.into());
        }
    };
    if let (Some(staged), Some(file)) = (&staged, &key_file) {
        std::fs::rename(staged, file).map_err(|e| krouter_config::Error::Io {
            path: file.clone(),
            action: "move the new storage key into place (it is in storage.key.new)",
            source: e,
        })?;
        fs::sync_dir(&ctx.home.secrets_dir())?;
    }
    Ok(Outcome::Rekeyed {
        credentials: count,
        key_file,
    })
}

pub(crate) fn backup(ctx: &Context<'_>, args: &BackupArgs) -> Result<Outcome, Error> {
    let mut writer = ctx.writer()?;
    writer.backup(&args.out)?;
    writer.transaction(
        &super::entry("store.backup", &args.out.display().to_string()),
        |_| Ok(()),
    )?;
    Ok(Outcome::BackedUp {
        out: args.out.clone(),
    })
}
