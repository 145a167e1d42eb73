//! One type per secret. Each holds its bytes in a `secrecy` box that is wiped on drop, has no
//! `Clone`, `Serialize` or `Display`, prints only its type name from `Debug`, and gives its
//! bytes out only through a method named `expose_secret`, so every use is greppable.

use std::fmt;

use secrecy::{ExposeSecret as _, SecretSlice};
use zeroize::Zeroizing;

pub mod load;
pub mod strength;

/// Which secret a message is about. Names the secret, never its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SecretName {
    /// `STORAGE_ENCRYPTION_KEY`: encrypts provider credentials in the store.
    StorageKey,
    /// `API_KEY_SECRET`: the HMAC key for client API key digests.
    ApiKeySecret,
    /// `JWT_SECRET`: signs dashboard sessions (later).
    JwtSecret,
}

macro_rules! secret_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        pub struct $name(SecretSlice<u8>);

        impl $name {
            /// Wraps bytes that have already passed the checks for this secret. Crate-only:
            /// outside code obtains secrets through [`load`] or generation.
            #[allow(dead_code, reason = "not every secret type is built inside the crate yet")]
            pub(crate) fn from_checked(bytes: Zeroizing<Vec<u8>>) -> Self {
                Self(SecretSlice::from(bytes.to_vec()))
            }

            /// The secret's bytes. Use only where the secret is consumed (a KDF, an HMAC).
            pub fn expose_secret(&self) -> &[u8] {
                self.0.expose_secret()
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(concat!(stringify!($name), "([redacted])"))
            }
        }
    };
}

secret_type!(
    /// `STORAGE_ENCRYPTION_KEY`: the root of the store's data key (HKDF with the install salt).
    StorageKey
);
secret_type!(
    /// `API_KEY_SECRET`: the HMAC-SHA256 key under which client API keys are digested.
    ApiKeySecret
);
secret_type!(
    /// `JWT_SECRET`: signs the admin dashboard's sessions.
    JwtSecret
);
secret_type!(
    /// A provider's credential (its upstream API key), decrypted for one use.
    ProviderCredential
);

/// A new random secret as text: 32 random bytes, base64url without padding (43 characters),
/// checked like any loaded secret. For `krouter-admin init` and `store rekey --generate`.
pub fn generate(name: SecretName) -> Result<Zeroizing<String>, crate::Error> {
    use base64::Engine as _;
    use ring::rand::SecureRandom as _;
    let rng = ring::rand::SystemRandom::new();
    // A random value can, rarely, contain a weak word; draw again.
    for _ in 0..16 {
        let mut bytes = Zeroizing::new([0u8; 32]);
        rng.fill(bytes.as_mut()).map_err(|_| crate::Error::Random)?;
        let text =
            Zeroizing::new(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes.as_ref()));
        if strength::check(name, text.as_bytes()).is_ok() {
            return Ok(text);
        }
    }
    Err(crate::Error::Random)
}

// === impl SecretName ===

impl SecretName {
    /// The environment variable that holds it.
    pub fn var(self) -> &'static str {
        match self {
            Self::StorageKey => "STORAGE_ENCRYPTION_KEY",
            Self::ApiKeySecret => "API_KEY_SECRET",
            Self::JwtSecret => "JWT_SECRET",
        }
    }

    /// Its file name under `KROUTER_HOME/secrets/`.
    pub fn file_name(self) -> &'static str {
        match self {
            Self::StorageKey => "storage.key",
            Self::ApiKeySecret => "api-key.secret",
            Self::JwtSecret => "jwt.secret",
        }
    }
}

impl fmt::Display for SecretName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.var())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_secrets_are_fresh_and_pass_the_checks() {
        let a = generate(SecretName::StorageKey).unwrap();
        let b = generate(SecretName::StorageKey).unwrap();
        assert_eq!(a.len(), 43);
        assert_ne!(a.as_str(), b.as_str());
        assert!(strength::check(SecretName::ApiKeySecret, a.as_bytes()).is_ok());
    }

    #[test]
    fn debug_is_redacted_for_every_secret_type() {
        let bytes = || Zeroizing::new(b"0123456789abcdefghijklmnopqrstuvwxyzSECRET".to_vec());
        let shown = [
            format!("{:?}", StorageKey::from_checked(bytes())),
            format!("{:?}", ApiKeySecret::from_checked(bytes())),
            format!("{:?}", JwtSecret::from_checked(bytes())),
            format!("{:?}", ProviderCredential::from_checked(bytes())),
        ];
        for text in shown {
            assert!(text.ends_with("([redacted])"), "{text}");
            assert!(!text.contains("SECRET"), "{text}");
        }
    }
}
