//! `krouter-admin init`: a new home with secrets, store, signing key, a signed starter
//! policy and settings. On an existing home it changes nothing and exits 1; if it fails
//! part-way, it removes every file it created.

use std::path::PathBuf;

use krouter_config::fs::{self, PRIVATE_FILE, PUBLIC_FILE};
use krouter_config::policy_files::signature_path;
use krouter_config::secret::{self, SecretName, load};
use krouter_config::settings::Settings;
use krouter_config::store::{AuditEntry, StoreWriter};
use krouter_policy::{SigningKey, SkipCredentialCheck};

use crate::context::Context;
use crate::error::Error;
use crate::output::Outcome;

/// The starter policy: API keys required, a `default` group, an example local provider
/// and route. Kept in `docs/examples/` so the documentation shows exactly what init writes.
const STARTER_POLICY: &str = include_str!("../../../docs/examples/policy.toml");

pub(crate) fn init(ctx: &Context<'_>) -> Result<Outcome, Error> {
    let home = &ctx.home;
    let mut markers = vec![
        home.settings_file(),
        home.policy_file(),
        home.store_file(),
        home.signing_key_file(),
    ];
    markers.extend([SecretName::StorageKey, SecretName::ApiKeySecret].map(|n| home.secret_file(n)));
    let found: Vec<String> = markers
        .iter()
        .filter(|p| p.symlink_metadata().is_ok())
        .map(|p| p.display().to_string())
        .collect();
    if !found.is_empty() {
        return Err(Error::HomeExists {
            home: home.root().to_owned(),
            found,
        });
    }
    home.create_dirs()?;
    let mut created: Vec<PathBuf> = Vec::new();
    let result = build(ctx, &mut created);
    if result.is_err() {
        for path in created.iter().rev() {
            let _removed = std::fs::remove_file(path);
        }
    }
    result
}

fn build(ctx: &Context<'_>, created: &mut Vec<PathBuf>) -> Result<Outcome, Error> {
    let home = &ctx.home;
    let mut generated = Vec::new();
    let mut supplied = Vec::new();
    for name in [SecretName::StorageKey, SecretName::ApiKeySecret] {
        if load::supplied_externally(name, ctx.vars) {
            supplied.push(name.var().to_owned());
        } else {
            let text = secret::generate(name)?;
            let path = home.secret_file(name);
            fs::write_new(&path, text.as_bytes(), PRIVATE_FILE)?;
            created.push(path);
            generated.push(name.var().to_owned());
        }
    }
    // Both load through the normal path, so a weak supplied secret stops init here.
    let storage_key = ctx.storage_key()?;
    ctx.api_key_secret()?;

    let store = home.store_file();
    created.extend(["", "-wal", "-shm"].map(|s| PathBuf::from(format!("{}{s}", store.display()))));
    let mut writer = StoreWriter::create(&store, &storage_key, &ctx.actor())?;

    let (signing_key, key_file) = SigningKey::generate()?;
    fs::write_new(
        &home.signing_key_file(),
        key_file.expose_secret().as_bytes(),
        PRIVATE_FILE,
    )?;
    created.push(home.signing_key_file());
    let public = home
        .trusted_dir()
        .join(format!("{}.pub", signing_key.key_id()));
    fs::write_new(
        &public,
        signing_key.trusted_key().to_file_text().as_bytes(),
        PUBLIC_FILE,
    )?;
    created.push(public);

    let policy = home.policy_file();
    krouter_policy::check(
        &policy.display().to_string(),
        STARTER_POLICY.as_bytes(),
        &SkipCredentialCheck,
    )?;
    fs::write_new(&policy, STARTER_POLICY.as_bytes(), PUBLIC_FILE)?;
    created.push(policy.clone());
    let sig = signature_path(&policy);
    fs::write_new(
        &sig,
        signing_key
            .sign(STARTER_POLICY.as_bytes())
            .to_file_text()
            .as_bytes(),
        PUBLIC_FILE,
    )?;
    created.push(sig);

    fs::write_new(
        &home.settings_file(),
        Settings::starter_file().as_bytes(),
        PUBLIC_FILE,
    )?;
    created.push(home.settings_file());

    writer.transaction(
        &AuditEntry {
            action: "init".to_owned(),
            target: home.root().display().to_string(),
            outcome: "ok".to_owned(),
        },
        |_| Ok(()),
    )?;
    Ok(Outcome::Initialized {
        home: home.root().to_owned(),
        generated,
        supplied,
        signing_key_id: signing_key.key_id().to_string(),
    })
}
