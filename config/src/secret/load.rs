//! Where secrets come from: the variable `NAME`, else the file named by `NAME_FILE` (Docker and
//! Kubernetes secrets), else `KROUTER_HOME/secrets/<file>`. Every source is read through a
//! [`Source`], so tests pass a map and never touch the process environment.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use crate::error::Error;
use crate::fs::read_secret;
use crate::secret::strength::{self, Weakness};
use crate::secret::{ApiKeySecret, JwtSecret, SecretName, StorageKey};

/// Largest secret file read.
const MAX_SECRET_FILE: u64 = 4096;

/// Environment-like variables: the process environment in the binaries, a map in tests.
pub trait Source {
    /// The value of `name`, if set and valid UTF-8.
    fn var(&self, name: &str) -> Option<&str>;
    /// Every `(name, value)` pair whose name starts with `prefix`.
    fn with_prefix(&self, prefix: &str) -> Vec<(&str, &str)>;
}

/// A snapshot of variables, taken once.
#[derive(Clone, Default)]
pub struct Vars(BTreeMap<String, String>);

/// Where a secret was found, for messages (never the value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The variable itself.
    Variable(SecretName),
    /// The file named by `NAME_FILE`.
    VariableFile(PathBuf),
    /// `KROUTER_HOME/secrets/<file>`.
    HomeFile(PathBuf),
    /// Typed at a prompt or piped on standard input.
    Input,
}

/// Why a secret could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SecretProblem {
    /// Not set anywhere.
    Missing {
        /// The `KROUTER_HOME/secrets/` file that was looked for last.
        home_file: PathBuf,
    },
    /// Both `NAME` and `NAME_FILE` are set.
    Ambiguous,
    /// Found, but weak.
    Weak {
        /// Where it was found.
        origin: Origin,
        /// What is wrong with it.
        weakness: Weakness,
    },
}

/// Loads `STORAGE_ENCRYPTION_KEY`.
pub fn storage_key(source: &dyn Source, secrets_dir: &Path) -> Result<StorageKey, Error> {
    load(SecretName::StorageKey, source, secrets_dir).map(StorageKey::from_checked)
}

/// Loads `API_KEY_SECRET`.
pub fn api_key_secret(source: &dyn Source, secrets_dir: &Path) -> Result<ApiKeySecret, Error> {
    load(SecretName::ApiKeySecret, source, secrets_dir).map(ApiKeySecret::from_checked)
}

/// Loads `JWT_SECRET`.
pub fn jwt_secret(source: &dyn Source, secrets_dir: &Path) -> Result<JwtSecret, Error> {
    load(SecretName::JwtSecret, source, secrets_dir).map(JwtSecret::from_checked)
}

/// A new storage key given as bytes (for `store rekey`), after the same checks as at load.
pub fn storage_key_from(bytes: Zeroizing<Vec<u8>>, origin: Origin) -> Result<StorageKey, Error> {
    strength::check(SecretName::StorageKey, &bytes).map_err(|(name, weakness)| Error::Secret {
        name,
        problem: SecretProblem::Weak { origin, weakness },
    })?;
    Ok(StorageKey::from_checked(bytes))
}

/// Where `name` comes from now: the variable, its `_FILE`, or the home file.
pub fn origin(name: SecretName, source: &dyn Source, secrets_dir: &Path) -> Origin {
    if source.var(name.var()).is_some() {
        Origin::Variable(name)
    } else if let Some(path) = source.var(&file_var(name)) {
        Origin::VariableFile(PathBuf::from(path))
    } else {
        Origin::HomeFile(secrets_dir.join(name.file_name()))
    }
}

/// Whether `name` is supplied by the variable or `NAME_FILE` (so `init` must not make one).
pub fn supplied_externally(name: SecretName, source: &dyn Source) -> bool {
    source.var(name.var()).is_some() || source.var(&file_var(name)).is_some()
}

fn file_var(name: SecretName) -> String {
    format!("{}_FILE", name.var())
}

/// Finds and checks one secret's bytes.
fn load(
    name: SecretName,
    source: &dyn Source,
    secrets_dir: &Path,
) -> Result<Zeroizing<Vec<u8>>, Error> {
    let direct = source.var(name.var());
    let file = source.var(&file_var(name));
    let (bytes, origin) = match (direct, file) {
        (Some(_), Some(_)) => {
            return Err(Error::Secret {
                name,
                problem: SecretProblem::Ambiguous,
            });
        }
        (Some(value), None) => (
            Zeroizing::new(value.as_bytes().to_vec()),
            Origin::Variable(name),
        ),
        (None, Some(path)) => {
            let path = PathBuf::from(path);
            (
                trimmed(read_secret(&path, MAX_SECRET_FILE)?),
                Origin::VariableFile(path),
            )
        }
        (None, None) => {
            let path = secrets_dir.join(name.file_name());
            if !path.exists() {
                return Err(Error::Secret {
                    name,
                    problem: SecretProblem::Missing { home_file: path },
                });
            }
            (
                trimmed(read_secret(&path, MAX_SECRET_FILE)?),
                Origin::HomeFile(path),
            )
        }
    };
    strength::check(name, &bytes).map_err(|(name, weakness)| Error::Secret {
        name,
        problem: SecretProblem::Weak { origin, weakness },
    })?;
    Ok(bytes)
}

/// A secret's bytes without one trailing newline, LF or CRLF (editors and `echo` add one).
/// Every place that reads a secret from a file or stdin uses this, so a key reads the same
/// wherever it comes from.
pub fn trimmed(mut bytes: Zeroizing<Vec<u8>>) -> Zeroizing<Vec<u8>> {
    if bytes.last() == Some(&b'\n') {
        bytes.pop();
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
    }
    bytes
}

// === impl Vars ===

impl Vars {
    /// The process environment, read once. The binaries call this in `main` and nowhere
    /// else; everything below takes a [`Source`].
    pub fn from_process() -> Self {
        Self(
            std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
                .collect(),
        )
    }

    /// Only the variables named in `names`: what a long-lived component keeps, so that it
    /// does not hold every secret the process was given.
    pub fn only(&self, names: &[&str]) -> Self {
        Self(
            self.0
                .iter()
                .filter(|(k, _)| names.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        )
    }

    /// Variables from pairs, for tests and embedding.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        Self(
            pairs
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        )
    }
}

impl Source for Vars {
    fn var(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    fn with_prefix(&self, prefix: &str) -> Vec<(&str, &str)> {
        self.0
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }
}

impl fmt::Debug for Vars {
    /// Names only: values may be secrets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

// === impl Origin ===

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Variable(name) => write!(f, "from the {name} variable"),
            Self::VariableFile(path) => write!(f, "from {}", path.display()),
            Self::HomeFile(path) => write!(f, "from {}", path.display()),
            Self::Input => f.write_str("from standard input"),
        }
    }
}

// === impl SecretProblem ===

impl SecretProblem {
    /// The whole message about secret `name`: what is wrong and how to fix it.
    pub fn describe(&self, name: SecretName) -> String {
        let var = name.var();
        match self {
            Self::Missing { home_file } => format!(
                "{var} is not set: set {var} or {var}_FILE, or create {} (`krouter-admin init` does)",
                home_file.display()
            ),
            Self::Ambiguous => format!("{var} and {var}_FILE are both set; set only one"),
            Self::Weak { origin, weakness } => format!("{var} ({origin}) {weakness}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;
    use crate::fs::{PRIVATE_FILE, write_new};

    const GOOD: &str = "q8Z3kV0m9XcT1rL7pW4nB6yH2dF5sJ0aQeU8iO3gK1w";

    #[test]
    fn the_variable_wins_then_the_file_then_home() {
        let dir = tempfile::tempdir().unwrap();
        let vars = Vars::from_pairs([("STORAGE_ENCRYPTION_KEY", GOOD)]);
        assert_eq!(
            storage_key(&vars, dir.path()).unwrap().expose_secret(),
            GOOD.as_bytes()
        );

        let file = dir.path().join("k");
        write_new(&file, format!("{GOOD}\n").as_bytes(), PRIVATE_FILE).unwrap();
        let path = file.to_str().unwrap();
        let vars = Vars::from_pairs([("API_KEY_SECRET_FILE", path)]);
        assert_eq!(
            api_key_secret(&vars, dir.path()).unwrap().expose_secret(),
            GOOD.as_bytes()
        );

        write_new(
            &dir.path().join("jwt.secret"),
            GOOD.as_bytes(),
            PRIVATE_FILE,
        )
        .unwrap();
        assert!(jwt_secret(&Vars::default(), dir.path()).is_ok());
    }

    #[test]
    fn missing_ambiguous_weak_and_exposed_secrets_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let err = storage_key(&Vars::default(), dir.path()).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("STORAGE_ENCRYPTION_KEY is not set"),
            "{err}"
        );

        let vars = Vars::from_pairs([
            ("STORAGE_ENCRYPTION_KEY", GOOD),
            ("STORAGE_ENCRYPTION_KEY_FILE", "/x"),
        ]);
        let err = storage_key(&vars, dir.path()).unwrap_err();
        assert!(
            err.to_string()
                .contains("STORAGE_ENCRYPTION_KEY_FILE are both set"),
            "{err}"
        );

        let vars = Vars::from_pairs([("API_KEY_SECRET", "changeme")]);
        let err = api_key_secret(&vars, dir.path()).unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("API_KEY_SECRET (from the API_KEY_SECRET variable) is 8 bytes"),
            "{text}"
        );
        assert!(!text.contains("changeme"), "{text}");

        let file = dir.path().join("api-key.secret");
        write_new(&file, GOOD.as_bytes(), PRIVATE_FILE).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap();
        let err = api_key_secret(&Vars::default(), dir.path()).unwrap_err();
        assert!(
            err.to_string()
                .contains("api-key.secret can be read by group or others"),
            "{err}"
        );
    }

    #[test]
    fn debug_of_vars_shows_names_only() {
        let vars = Vars::from_pairs([("STORAGE_ENCRYPTION_KEY", GOOD)]);
        let shown = format!("{vars:?}");
        assert!(shown.contains("STORAGE_ENCRYPTION_KEY") && !shown.contains(GOOD));
    }
}
