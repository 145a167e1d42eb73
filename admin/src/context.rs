//! What every store command needs: the variables read once in `main`, the home they point
//! at, the acting OS user, the secrets, the store writer, and the policy in force.

use std::path::PathBuf;

use krouter_config::fs::{FileLock, read_secret, sync_dir};
use krouter_config::home::KrouterHome;
use krouter_config::policy_files::{read_signed, read_trusted_dir};
use krouter_config::secret::load::{self, Origin, Source, Vars};
use krouter_config::secret::{ApiKeySecret, SecretName, StorageKey};
use krouter_config::store::{AuditEntry, StoreError, StoreWriter};
use krouter_policy::{CredentialNames, Policy};

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

    /// The store, opened for writing. Finishes an interrupted `store rekey` first. A staged
    /// `storage.key.new` is looked at only under the key lock that a live rekey holds until
    /// its key is in place, so a running rekey is waited for, never interfered with. Under the
    /// lock, a staged key means a rekey died: if `storage.key` still opens the store, it died
    /// before its commit and the staged key is stale (removed); if not, it died after, and the
    /// staged key is moved into place.
    pub(crate) fn writer(&self) -> Result<StoreWriter, Error> {
        let store = self.home.store_file();
        let origin = load::origin(SecretName::StorageKey, self.vars, &self.home.secrets_dir());
        let staged = match &origin {
            Origin::HomeFile(key_file) => {
                Some(PathBuf::from(format!("{}.new", key_file.display())))
            }
            Origin::Variable(_) | Origin::VariableFile(_) | Origin::Input => None,
        };
        let Some(staged) = staged.filter(|s| s.exists()) else {
            return Ok(StoreWriter::open(
                &store,
                &self.storage_key()?,
                &self.actor(),
            )?);
        };
        let _lock = FileLock::acquire(&self.home.secrets_dir().join("storage.key.lock"))?;
        let key = self.storage_key()?;
        if !staged.exists() {
            return Ok(StoreWriter::open(&store, &key, &self.actor())?);
        }
        let io = |path: &PathBuf, action: &'static str, e| krouter_config::Error::Io {
            path: path.clone(),
            action,
            source: e,
        };
        match StoreWriter::open(&store, &key, &self.actor()) {
            Ok(writer) => {
                std::fs::remove_file(&staged)
                    .map_err(|e| io(&staged, "remove a stale new storage key", e))?;
                sync_dir(&self.home.secrets_dir())?;
                Ok(writer)
            }
            Err(krouter_config::Error::Store(StoreError::WrongKey { .. })) => {
                let bytes = load::trimmed(read_secret(&staged, 4096)?);
                let new_key = load::storage_key_from(bytes, Origin::HomeFile(staged.clone()))?;
                let mut writer = StoreWriter::open(&store, &new_key, &self.actor())?;
                let key_file = self.home.secret_file(SecretName::StorageKey);
                std::fs::rename(&staged, &key_file)
                    .map_err(|e| io(&key_file, "move the new storage key into place", e))?;
                sync_dir(&self.home.secrets_dir())?;
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
            files.as_files(),
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
