//! `KROUTER_HOME` and the typed paths under it (DESIGN §3). Directories are created 0700;
//! the secrets directory must stay private or krouter refuses to use it.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use crate::error::Error;
use crate::fs::create_private_dir;
use crate::secret::SecretName;
use crate::secret::load::Source;

/// The home directory and every path krouter uses under it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KrouterHome {
    root: PathBuf,
}

impl KrouterHome {
    /// `KROUTER_HOME`, else `$HOME/.krouter`.
    pub fn resolve(source: &dyn Source) -> Result<Self, Error> {
        if let Some(home) = source.var("KROUTER_HOME").filter(|h| !h.is_empty()) {
            return Ok(Self::at(home));
        }
        match source.var("HOME").filter(|h| !h.is_empty()) {
            Some(home) => Ok(Self::at(Path::new(home).join(".krouter"))),
            None => Err(Error::NoHome),
        }
    }

    /// A home at `root`.
    pub fn at(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The home directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `krouter.toml`: settings, no secrets.
    pub fn settings_file(&self) -> PathBuf {
        self.root.join("krouter.toml")
    }

    /// `policy/`.
    pub fn policy_dir(&self) -> PathBuf {
        self.root.join("policy")
    }

    /// `policy/policy.toml`.
    pub fn policy_file(&self) -> PathBuf {
        self.policy_dir().join("policy.toml")
    }

    /// `policy/trusted/`: the public keys the proxy trusts.
    pub fn trusted_dir(&self) -> PathBuf {
        self.policy_dir().join("trusted")
    }

    /// `secrets/` (0700).
    pub fn secrets_dir(&self) -> PathBuf {
        self.root.join("secrets")
    }

    /// `secrets/<file>` for a secret.
    pub fn secret_file(&self, name: SecretName) -> PathBuf {
        self.secrets_dir().join(name.file_name())
    }

    /// `secrets/policy-signing.key` (admin only).
    pub fn signing_key_file(&self) -> PathBuf {
        self.secrets_dir().join("policy-signing.key")
    }

    /// `db/`.
    pub fn db_dir(&self) -> PathBuf {
        self.root.join("db")
    }

    /// `db/store.sqlite`: written by the admin only.
    pub fn store_file(&self) -> PathBuf {
        self.db_dir().join("store.sqlite")
    }

    /// `state/`: the only directory the proxy writes.
    pub fn state_dir(&self) -> PathBuf {
        self.root.join("state")
    }

    /// `state/state.sqlite`.
    pub fn state_file(&self) -> PathBuf {
        self.state_dir().join("state.sqlite")
    }

    /// `certs/`: the local CA for MITM mode (later).
    pub fn certs_dir(&self) -> PathBuf {
        self.root.join("certs")
    }

    /// Every directory of a home, in creation order.
    pub fn dirs(&self) -> [PathBuf; 7] {
        [
            self.root.clone(),
            self.policy_dir(),
            self.trusted_dir(),
            self.secrets_dir(),
            self.db_dir(),
            self.state_dir(),
            self.certs_dir(),
        ]
    }

    /// Creates every directory (0700); existing ones are kept.
    pub fn create_dirs(&self) -> Result<(), Error> {
        self.dirs().iter().try_for_each(|d| create_private_dir(d))
    }

    /// Refuses a secrets directory that group or others can enter or read.
    pub fn check_private(&self) -> Result<(), Error> {
        let dir = self.secrets_dir();
        let meta = std::fs::metadata(&dir)
            .map_err(|e| Error::io(&dir, "read the secrets directory", e))?;
        let mode = meta.mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(Error::Permissions { path: dir, mode });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;
    use crate::secret::load::Vars;

    #[test]
    fn krouter_home_wins_over_home() {
        let vars = Vars::from_pairs([("KROUTER_HOME", "/srv/k"), ("HOME", "/home/u")]);
        assert_eq!(
            KrouterHome::resolve(&vars).unwrap().root(),
            Path::new("/srv/k")
        );
        let vars = Vars::from_pairs([("HOME", "/home/u")]);
        let home = KrouterHome::resolve(&vars).unwrap();
        assert_eq!(
            home.store_file(),
            Path::new("/home/u/.krouter/db/store.sqlite")
        );
        assert!(matches!(
            KrouterHome::resolve(&Vars::default()),
            Err(Error::NoHome)
        ));
    }

    #[test]
    fn directories_are_private_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let home = KrouterHome::at(dir.path().join("home"));
        home.create_dirs().unwrap();
        for d in home.dirs() {
            assert_eq!(
                std::fs::metadata(&d).unwrap().mode() & 0o777,
                0o700,
                "{}",
                d.display()
            );
        }
        home.check_private().unwrap();
        std::fs::set_permissions(home.secrets_dir(), std::fs::Permissions::from_mode(0o750))
            .unwrap();
        let err = home.check_private().unwrap_err();
        assert!(
            err.to_string()
                .contains("secrets can be read by group or others"),
            "{err}"
        );
    }
}
