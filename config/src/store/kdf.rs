//! The store's data key: HKDF-SHA256 from `STORAGE_ENCRYPTION_KEY` and the per-install salt.
//!
//! One extraction from the storage key and the salt gives two independent outputs: the
//! [`DataKey`] that encrypts fields (info `krouter store data key v1`) and a check key (info
//! `krouter store key check v1`) whose only use is the [`KeyCheckValue`]: a truncated HMAC of a
//! fixed message, stored beside the salt so that a wrong storage key is detected at start-up
//! with a clear error, without the stored value revealing anything about the data key.
//!
//! This module owns the derivation and the key check. It must never print, log, `Debug` or
//! return the storage key or the data key; the data key leaves it only as a `pub(crate)`
//! borrow for [`super::envelope`].

use std::fmt;

use ring::hkdf;
use ring::hmac;
use ring::rand::{SecureRandom as _, SystemRandom};
use subtle::ConstantTimeEq as _;
use zeroize::Zeroizing;

use crate::secret::StorageKey;

/// Length of the install salt, in bytes.
pub const SALT_LEN: usize = 32;
/// Length of a key check value, in bytes.
pub const KEY_CHECK_LEN: usize = 16;

/// HKDF info for the field-encryption key.
const DATA_KEY_INFO: &[u8] = b"krouter store data key v1";
/// HKDF info for the key that computes the key check value.
const CHECK_KEY_INFO: &[u8] = b"krouter store key check v1";
/// The message the key check value authenticates.
const CHECK_MESSAGE: &[u8] = b"krouter key check";

/// What went wrong deriving or checking the store's key. Never holds key material.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KdfError {
    /// HKDF refused to produce the key (cannot happen for 32-byte outputs).
    #[error("the store's data key could not be derived")]
    Derive,
    /// The system's random number generator failed while making a salt.
    #[error("the system random number generator failed")]
    Random,
    /// A stored install salt is not 32 bytes.
    #[error("the store's install salt is not 32 bytes")]
    SaltLength,
    /// A stored key check value is not 16 bytes.
    #[error("the store's key check value is not 16 bytes")]
    KeyCheckLength,
    /// The storage key does not produce the store's key check value.
    #[error(
        "STORAGE_ENCRYPTION_KEY does not match this store: it is the wrong key, or the store belongs to another install"
    )]
    WrongStorageKey,
}

/// The key that encrypts the store's fields (secret), with the key that computes its check
/// value. Wiped on drop; no `Clone`; `Debug` prints only `DataKey([redacted])`.
pub struct DataKey {
    data: Zeroizing<[u8; 32]>,
    check: Zeroizing<[u8; 32]>,
}

/// The random per-install salt kept in the store. Public, not secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallSalt([u8; SALT_LEN]);

/// The first 16 bytes of HMAC-SHA256, under the check key, of a fixed message. Stored in the
/// store in the clear; compare with [`KeyCheckValue::matches`].
#[derive(Debug, Clone)]
pub struct KeyCheckValue([u8; KEY_CHECK_LEN]);

// === impl DataKey ===

impl DataKey {
    /// Derives the data key and its check key from `storage_key` and `salt`.
    pub fn derive(storage_key: &StorageKey, salt: &InstallSalt) -> Result<Self, KdfError> {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, salt.as_bytes())
            .extract(storage_key.expose_secret());
        let mut data = Zeroizing::new([0_u8; 32]);
        let mut check = Zeroizing::new([0_u8; 32]);
        expand(&prk, DATA_KEY_INFO, &mut data)?;
        expand(&prk, CHECK_KEY_INFO, &mut check)?;
        Ok(Self { data, check })
    }

    /// Succeeds if this key produces `stored`, the check value kept in the store.
    pub fn verify(&self, stored: &KeyCheckValue) -> Result<(), KdfError> {
        if KeyCheckValue::of(self).matches(stored) {
            Ok(())
        } else {
            Err(KdfError::WrongStorageKey)
        }
    }

    /// The AES-256-GCM key bytes. Crate-only: the envelope module is the one consumer.
    pub(crate) fn expose_secret(&self) -> &[u8; 32] {
        &self.data
    }
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataKey([redacted])")
    }
}

// === impl InstallSalt ===

impl InstallSalt {
    /// A new random salt, made once by `krouter-admin init`.
    pub fn generate() -> Result<Self, KdfError> {
        let mut bytes = [0_u8; SALT_LEN];
        SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| KdfError::Random)?;
        Ok(Self(bytes))
    }

    /// Reads a stored salt: exactly 32 bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, KdfError> {
        <[u8; SALT_LEN]>::try_from(bytes)
            .map(Self)
            .map_err(|_| KdfError::SaltLength)
    }

    /// The salt's bytes, for storage.
    pub fn as_bytes(&self) -> &[u8; SALT_LEN] {
        &self.0
    }
}

// === impl KeyCheckValue ===

impl KeyCheckValue {
    /// The check value of `key`: computed with its check key, never with the data key.
    pub fn of(key: &DataKey) -> Self {
        let check_key = hmac::Key::new(hmac::HMAC_SHA256, key.check.as_ref());
        let tag = hmac::sign(&check_key, CHECK_MESSAGE);
        let mut out = [0_u8; KEY_CHECK_LEN];
        for (slot, byte) in out.iter_mut().zip(tag.as_ref()) {
            *slot = *byte;
        }
        Self(out)
    }

    /// Reads a stored check value: exactly 16 bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, KdfError> {
        <[u8; KEY_CHECK_LEN]>::try_from(bytes)
            .map(Self)
            .map_err(|_| KdfError::KeyCheckLength)
    }

    /// The check value's bytes, for storage.
    pub fn as_bytes(&self) -> &[u8; KEY_CHECK_LEN] {
        &self.0
    }

    /// Whether two check values are equal, in constant time.
    pub fn matches(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

// === helpers ===

/// Fills `out` (32 bytes) with HKDF-Expand of `prk` under `info`.
fn expand(prk: &hkdf::Prk, info: &[u8], out: &mut [u8; 32]) -> Result<(), KdfError> {
    let info = [info];
    // `HKDF_SHA256` as the length type asks for 32 bytes, the size of `out`.
    let okm = prk
        .expand(&info, hkdf::HKDF_SHA256)
        .map_err(|_| KdfError::Derive)?;
    okm.fill(out).map_err(|_| KdfError::Derive)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn storage_key(byte: u8) -> StorageKey {
        StorageKey::from_checked(Zeroizing::new(vec![byte; 32]))
    }

    fn salt(byte: u8) -> InstallSalt {
        InstallSalt::from_bytes(&[byte; SALT_LEN]).unwrap()
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn same_inputs_give_the_same_key_and_check_value() {
        let a = DataKey::derive(&storage_key(1), &salt(2)).unwrap();
        let b = DataKey::derive(&storage_key(1), &salt(2)).unwrap();
        assert_eq!(a.expose_secret(), b.expose_secret());
        assert!(KeyCheckValue::of(&a).matches(&KeyCheckValue::of(&b)));
        a.verify(&KeyCheckValue::of(&b)).unwrap();
    }

    #[test]
    fn a_different_storage_key_or_salt_changes_key_and_check_value() {
        let base = DataKey::derive(&storage_key(1), &salt(2)).unwrap();
        let kcv = KeyCheckValue::of(&base);
        for other in [
            DataKey::derive(&storage_key(3), &salt(2)).unwrap(),
            DataKey::derive(&storage_key(1), &salt(4)).unwrap(),
        ] {
            assert_ne!(other.expose_secret(), base.expose_secret());
            assert!(!KeyCheckValue::of(&other).matches(&kcv));
            assert_eq!(other.verify(&kcv).unwrap_err(), KdfError::WrongStorageKey);
        }
    }

    #[test]
    fn derivation_matches_an_independent_computation() {
        // Computed with Python's hmac/hashlib (RFC 5869 HKDF-SHA256), storage key 32 × 0x01,
        // salt 32 × 0x02.
        let key = DataKey::derive(&storage_key(1), &salt(2)).unwrap();
        assert_eq!(
            hex(key.expose_secret()),
            "2be5cfd422a7d65a88834f6def3a17aaa42ebc58c23162866fa8c31a4a5229f3"
        );
        assert_eq!(
            hex(key.check.as_ref()),
            "3eeb84e1f04f0c69938ce1cc3e1f8ab7f620b08a5b57ad65dffa49cc9e0114c2"
        );
        assert_eq!(
            hex(KeyCheckValue::of(&key).as_bytes()),
            "a3a8a94ac4bd1e79e7e99c8040aa1004"
        );
    }

    #[test]
    fn the_check_value_is_not_data_key_material() {
        let key = DataKey::derive(&storage_key(1), &salt(2)).unwrap();
        let kcv = KeyCheckValue::of(&key);
        assert_ne!(key.check.as_ref(), key.expose_secret());
        let under_data_key = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, key.expose_secret()),
            CHECK_MESSAGE,
        );
        assert_ne!(
            kcv.as_bytes().as_slice(),
            &under_data_key.as_ref()[..KEY_CHECK_LEN]
        );
        assert_ne!(
            kcv.as_bytes().as_slice(),
            &key.expose_secret()[..KEY_CHECK_LEN]
        );
    }

    #[test]
    fn debug_of_a_data_key_is_redacted() {
        let key = DataKey::derive(&storage_key(1), &salt(2)).unwrap();
        let shown = format!("{key:?}");
        assert_eq!(shown, "DataKey([redacted])");
        assert_eq!(format!("{key:#?}"), "DataKey([redacted])");
    }

    #[test]
    fn salts_round_trip_and_differ() {
        let a = InstallSalt::generate().unwrap();
        let b = InstallSalt::generate().unwrap();
        assert_ne!(a, b);
        assert_eq!(InstallSalt::from_bytes(a.as_bytes()).unwrap(), a);
    }

    #[test]
    fn from_bytes_requires_the_exact_length() {
        for len in [0, 1, 16, 31, 33, 64] {
            assert_eq!(
                InstallSalt::from_bytes(&vec![0; len]).unwrap_err(),
                KdfError::SaltLength
            );
        }
        for len in [0, 1, 15, 17, 32] {
            assert_eq!(
                KeyCheckValue::from_bytes(&vec![0; len]).unwrap_err(),
                KdfError::KeyCheckLength
            );
        }
        let key = DataKey::derive(&storage_key(1), &salt(2)).unwrap();
        let kcv = KeyCheckValue::of(&key);
        let back = KeyCheckValue::from_bytes(kcv.as_bytes()).unwrap();
        assert!(back.matches(&kcv));
        let mut flipped = *kcv.as_bytes();
        flipped[15] ^= 1;
        assert!(!KeyCheckValue::from_bytes(&flipped).unwrap().matches(&kcv));
    }

    #[test]
    fn error_messages_are_one_line() {
        for err in [
            KdfError::Derive,
            KdfError::Random,
            KdfError::SaltLength,
            KdfError::KeyCheckLength,
            KdfError::WrongStorageKey,
        ] {
            assert!(!err.to_string().contains('\n'));
        }
    }
}
