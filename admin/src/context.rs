//! What every store command needs: the variables read once in `main`, the home they point
//! at, the acting OS user, the secrets, the store writer, and the policy in force.

use std::path::PathBuf;

use krouter_config::fs::read_secret;
use krouter_config::home::KrouterHome;
use krouter_config::policy_files::{read_signed, read_trusted_dir};
use krouter_config::secret::load::{self, Origin, Source, Vars};
use krouter_config::secret::{ApiKeySecret, SecretName, StorageKey};
use krouter_config::store::{AuditEntry, StoreError, StoreWriter};
use krouter_policy::{CredentialNames, Policy, PolicyFiles};

use crate::error::Error;

/// The environment of one command.
pub(crate) struct Context<'a> {
    pub(crate) vars: &'a Vars,
    pub(crate) home: KrouterHome,
}

/// The credential names of a store, for validating the policy in force against it.
pub(crate) struct StoredNames(pub(crate) Vec<String>);

impl<'a> Context<'a> {
    pub(crate) fn new(vars: &'a Vars) -> Result<Self, Error> {
        Ok(Self {
            vars,
            home: KrouterHome::resolve(vars)?,
        })
    }

    /// The OS user running the command, for the audit log.
    pub(crate) fn actor(&self) -> String {
        let name = self
            .vars
            .var("USER")
            .or_else(|| self.vars.var("LOGNAME"))
            .filter(|n| !n.is_empty());
        let uid = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("Uid:"))
                    .and_then(|rest| rest.split_whitespace().next().map(str::to_owned))
            });
        match (name, uid) {
            (Some(name), Some(uid)) => format!("{name} (uid {uid})"),
            (Some(name), None) => name.to_owned(),
            (None, Some(uid)) => format!("uid {uid}"),
            (None, None) => "unknown".to_owned(),
        }
    }

    /// `STORAGE_ENCRYPTION_KEY`, after checking the secrets directory is private.
    pub(crate) fn storage_key(&self) -> Result<StorageKey, Error> {
        self.check_secrets_dir()?;
        Ok(load::storage_key(self.vars, &self.home.secrets_dir())?)
    }

    /// `API_KEY_SECRET`.
    pub(crate) fn api_key_secret(&self) -> Result<ApiKeySecret, Error> {
        self.check_secrets_dir()?;
        Ok(load::api_key_secret(self.vars, &self.home.secrets_dir())?)
    }

    fn check_secrets_dir(&self) -> Result<(), Error> {
        if self.home.secrets_dir().exists() {
            self.home.check_private()?;
        }
        Ok(())
    }

    /// The store, opened for writing. Finishes an interrupted `store rekey` first: when the
    /// home's `storage.key` no longer opens the store but `storage.key.new` does, the rekey
    /// committed and only the final rename was lost, so the rename is done now; when
    /// `storage.key` still opens it, a left-over `storage.key.new` is stale and removed.
    pub(crate) fn writer(&self) -> Result<StoreWriter, Error> {
        let store = self.home.store_file();
        let key = self.storage_key()?;
        let opened = StoreWriter::open(&store, &key, &self.actor());
        let origin = load::origin(SecretName::StorageKey, self.vars, &self.home.secrets_dir());
        let Origin::HomeFile(key_file) = origin else {
            return Ok(opened?);
        };
        let staged = PathBuf::from(format!("{}.new", key_file.display()));
        if !staged.exists() {
            return Ok(opened?);
        }
        match opened {
            Ok(writer) => {
                std::fs::remove_file(&staged).map_err(|e| krouter_config::Error::Io {
                    path: staged.clone(),
                    action: "remove a stale new storage key",
                    source: e,
                })?;
                Ok(writer)
            }
            Err(krouter_config::Error::Store(StoreError::WrongKey { .. })) => {
                let bytes = read_secret(&staged, 4096)?;
                let new_key = load::storage_key_from(bytes, Origin::HomeFile(staged.clone()))?;
                let mut writer = StoreWriter::open(&store, &new_key, &self.actor())?;
                std::fs::rename(&staged, &key_file).map_err(|e| krouter_config::Error::Io {
                    path: key_file.clone(),
                    action: "move the new storage key into place",
                    source: e,
                })?;
                writer.transaction(
                    &AuditEntry {
                        action: "store.rekey.finish".to_owned(),
                        target: "storage key".to_owned(),
                        outcome: "ok".to_owned(),
                    },
                    |_| Ok(()),
                )?;
                Ok(writer)
            }
            Err(other) => Err(other.into()),
        }
    }

    /// The signed policy in force, verified as the proxy would (without the rollback
    /// check, which is the proxy's state).
    pub(crate) fn policy(&self, credentials: &dyn CredentialNames) -> Result<Policy, Error> {
        let trusted = read_trusted_dir(&self.home.trusted_dir()).map_err(Error::Trust)?;
        let files = read_signed(&self.home.policy_file(), None)?;
        Ok(krouter_policy::load(
            PolicyFiles {
                name: &files.name,
                bytes: &files.bytes,
                sig_name: &files.sig_name,
                sig: &files.sig,
            },
            &trusted,
            None,
            credentials,
        )?)
    }
}

impl CredentialNames for StoredNames {
    fn contains(&self, name: &str) -> bool {
        self.0.iter().any(|n| n == name)
    }
}
