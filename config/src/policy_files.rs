//! The signed policy on disk: `policy.toml`, its detached `policy.toml.sig`, and the
//! directory of trusted `*.pub` keys. Reads bytes and hands them to `krouter_policy`, which
//! does every check; nothing here interprets a policy.

use std::path::{Path, PathBuf};

use krouter_policy::{MAX_POLICY_BYTES, PolicyFiles, TrustedKeys};

use crate::error::Error;
use crate::fs::read_limited;

/// Largest `.sig` or `.pub` file read; real ones are under 200 bytes.
const MAX_KEY_FILE: u64 = 4096;

/// A policy file and its signature, read from disk.
#[derive(Debug)]
pub struct SignedPolicyFiles {
    /// The policy path as given, for messages.
    pub name: String,
    /// The policy's exact bytes.
    pub bytes: Vec<u8>,
    /// The signature path as given, for messages.
    pub sig_name: String,
    /// The signature file's bytes.
    pub sig: Vec<u8>,
}

impl SignedPolicyFiles {
    /// The files as the policy crate's loader takes them.
    pub fn as_files(&self) -> PolicyFiles<'_> {
        PolicyFiles {
            name: &self.name,
            bytes: &self.bytes,
            sig_name: &self.sig_name,
            sig: &self.sig,
        }
    }
}

/// Where the detached signature of `policy` lives: the same path with `.sig` appended.
pub fn signature_path(policy: &Path) -> PathBuf {
    let mut name = policy.as_os_str().to_owned();
    name.push(".sig");
    PathBuf::from(name)
}

/// Reads a policy file (at most [`MAX_POLICY_BYTES`]).
pub fn read_policy(path: &Path) -> Result<Vec<u8>, Error> {
    read_limited(path, u64::try_from(MAX_POLICY_BYTES).unwrap_or(u64::MAX))
}

/// Reads a policy and its signature (`sig`, or the default [`signature_path`]).
pub fn read_signed(policy: &Path, sig: Option<&Path>) -> Result<SignedPolicyFiles, Error> {
    let sig_path = sig.map_or_else(|| signature_path(policy), Path::to_owned);
    let bytes = read_policy(policy)?;
    let sig = match read_limited(&sig_path, MAX_KEY_FILE) {
        Ok(sig) => sig,
        Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::MissingSignature { path: sig_path });
        }
        Err(e) => return Err(e),
    };
    Ok(SignedPolicyFiles {
        name: policy.display().to_string(),
        bytes,
        sig_name: sig_path.display().to_string(),
        sig,
    })
}

/// Reads every `*.pub` file in `dir`, in name order, as the trusted policy keys. Other files
/// are ignored; a malformed or repeated key is an error naming its file.
pub fn read_trusted_dir(dir: &Path) -> Result<TrustedKeys, Error> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| Error::io(dir, "read the trusted keys directory", e))?;
    let mut paths = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(dir, "read the trusted keys directory", e))?;
        let path = entry.path();
        if path.extension().is_some_and(|ext| ext == "pub") && path.is_file() {
            paths.push(path);
        }
    }
    paths.sort();
    let mut keys = TrustedKeys::new();
    for path in paths {
        let bytes = read_limited(&path, MAX_KEY_FILE)?;
        keys.add_file(&path.display().to_string(), &bytes)?;
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::{PUBLIC_FILE, write_new};

    #[test]
    fn the_signature_sits_beside_the_policy() {
        assert_eq!(
            signature_path(Path::new("policy/policy.toml")),
            PathBuf::from("policy/policy.toml.sig")
        );
    }

    #[test]
    fn a_missing_signature_is_named_as_such() {
        let dir = tempfile::tempdir().unwrap();
        let policy = dir.path().join("policy.toml");
        write_new(&policy, b"serial = 1\n", PUBLIC_FILE).unwrap();
        let err = read_signed(&policy, None).unwrap_err();
        assert!(matches!(err, Error::MissingSignature { .. }), "{err}");
    }

    #[test]
    fn trusted_dir_reads_pub_files_only_and_names_bad_ones() {
        let dir = tempfile::tempdir().unwrap();
        let (key, _file) = krouter_policy::SigningKey::generate().unwrap();
        let text = key.trusted_key().to_file_text();
        write_new(&dir.path().join("a.pub"), text.as_bytes(), PUBLIC_FILE).unwrap();
        write_new(&dir.path().join("README"), b"not a key", PUBLIC_FILE).unwrap();
        assert_eq!(read_trusted_dir(dir.path()).unwrap().len(), 1);
        write_new(&dir.path().join("b.pub"), b"garbage", PUBLIC_FILE).unwrap();
        let err = read_trusted_dir(dir.path()).unwrap_err();
        assert!(err.to_string().contains("b.pub"), "{err}");
        assert!(read_trusted_dir(&dir.path().join("missing")).is_err());
    }
}
