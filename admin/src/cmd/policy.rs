//! `krouter-admin policy keygen|sign|verify|check`.

use std::path::Path;

use krouter_config::fs::{self, PRIVATE_FILE, PUBLIC_FILE};
use krouter_config::policy_files::{read_policy, read_signed, read_trusted_dir, signature_path};
use krouter_policy::{SigningKey, SkipCredentialCheck};

use crate::cli::{CheckArgs, KeygenArgs, SignArgs, VerifyArgs};
use crate::error::Error;
use crate::output::Outcome;

/// File name of the private key `keygen` writes.
pub(crate) const KEY_FILE: &str = "policy-signing.key";
/// File name of the public key `keygen` writes.
pub(crate) const PUB_FILE: &str = "policy-signing.pub";
/// Largest signing key file read; a real one is about 150 bytes.
const MAX_KEY_FILE: u64 = 4096;

/// Creates a key pair in `--out`; refuses to replace either file.
pub(crate) fn keygen(args: &KeygenArgs) -> Result<Outcome, Error> {
    let private_key = args.out.join(KEY_FILE);
    let public_key = args.out.join(PUB_FILE);
    for path in [&private_key, &public_key] {
        if path.symlink_metadata().is_ok() {
            return Err(krouter_config::Error::Exists { path: path.clone() }.into());
        }
    }
    fs::create_private_dir(&args.out)?;
    let (key, file) = SigningKey::generate()?;
    fs::write_new(&private_key, file.expose_secret().as_bytes(), PRIVATE_FILE)?;
    let public = key.trusted_key().to_file_text();
    if let Err(e) = fs::write_new(&public_key, public.as_bytes(), PUBLIC_FILE) {
        // Leave nothing half-made: a private key without its public half is useless.
        let _removed = std::fs::remove_file(&private_key);
        return Err(e.into());
    }
    Ok(Outcome::KeyCreated {
        key_id: key.key_id().to_string(),
        private_key,
        public_key,
    })
}

/// Validates the policy, then signs its exact bytes into `POLICY.sig`.
pub(crate) fn sign(args: &SignArgs) -> Result<Outcome, Error> {
    let key_bytes = fs::read_secret(&args.key, MAX_KEY_FILE)?;
    let key = SigningKey::parse(&display(&args.key), &key_bytes)?;
    let bytes = read_policy(&args.policy)?;
    let name = display(&args.policy);
    let mut summary = krouter_policy::check(&name, &bytes, &SkipCredentialCheck)?;
    let signature = key.sign(&bytes);
    let sig_path = signature_path(&args.policy);
    fs::replace_atomic(&sig_path, signature.to_file_text().as_bytes(), PUBLIC_FILE)?;
    summary.signed_by = Some(key.key_id().to_string());
    Ok(Outcome::Signed {
        signature: sig_path,
        summary,
    })
}

/// Verifies the signature against the trusted keys, then validates, as the proxy does.
pub(crate) fn verify(args: &VerifyArgs) -> Result<Outcome, Error> {
    let trusted = read_trusted_dir(&args.trusted).map_err(Error::Trust)?;
    let files = read_signed(&args.policy, args.sig.as_deref())?;
    let policy = krouter_policy::load(files.as_files(), &trusted, None, &SkipCredentialCheck)?;
    Ok(Outcome::Verified {
        summary: policy.summary(),
    })
}

/// Validates without a signature.
pub(crate) fn check(args: &CheckArgs) -> Result<Outcome, Error> {
    let bytes = read_policy(&args.policy)?;
    let summary = krouter_policy::check(&display(&args.policy), &bytes, &SkipCredentialCheck)?;
    Ok(Outcome::Valid { summary })
}

fn display(path: &Path) -> String {
    path.display().to_string()
}
