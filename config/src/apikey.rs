//! Client API keys: the secret key a client sends, its public id, and the digest the store
//! keeps in its place.
//!
//! A key is `sk-krouter-`, 24 random base62 characters (over 142 bits) and a 6-character
//! base62 checksum of everything before it, 41 characters in all. The checksum lets a typo be
//! rejected before any lookup, and the fixed prefix lets secret scanners recognise a leaked key.
//! A [`KeyId`] (`kid_` and 12 random base62 characters) is generated independently of the key,
//! so the id shown in `keys list` and in logs says nothing about the key.
//!
//! This module owns the key format, and [`KeyDigest`]: HMAC-SHA256 under `API_KEY_SECRET`,
//! the only form in which a key is ever stored, compared in constant time. It must never
//! print, log or `Debug` a key, nor put any part of the text it was given in an error.

use std::fmt;
use std::mem;
use std::str;

use ring::digest::{self, SHA256};
use ring::hmac;
use ring::rand::{SecureRandom as _, SystemRandom};
use secrecy::{ExposeSecret as _, SecretString};
use subtle::ConstantTimeEq as _;
use zeroize::Zeroizing;

use crate::secret::ApiKeySecret;

/// The fixed start of every client API key.
pub const API_KEY_PREFIX: &str = "sk-krouter-";
/// The length of every client API key, in characters (all ASCII).
pub const API_KEY_LEN: usize = API_KEY_PREFIX.len() + BODY_LEN + CHECKSUM_LEN;
/// The fixed start of every key id.
pub const KEY_ID_PREFIX: &str = "kid_";
/// The length of every key id, in characters (all ASCII).
pub const KEY_ID_LEN: usize = KEY_ID_PREFIX.len() + KEY_ID_BODY_LEN;

/// Random base62 characters in a key: 24 × log2(62) ≈ 142.9 bits.
const BODY_LEN: usize = 24;
/// Base62 characters of checksum; 62^6 > 2^32, so any u32 fits.
const CHECKSUM_LEN: usize = 6;
/// Random base62 characters in a key id.
const KEY_ID_BODY_LEN: usize = 12;
/// Random bytes at or above this are rejected, so `byte % 62` is uniform (248 = 4 × 62).
const REJECT_FROM: u8 = 248;
/// Rounds of random bytes tried before giving up on a random number generator that only
/// returns rejected bytes; a working one needs more than one round with negligible odds.
const MAX_RANDOM_ROUNDS: usize = 16;
/// Prefix of the HMAC message, so a key digest can never be confused with another HMAC
/// under the same secret.
const DIGEST_CONTEXT: &[u8] = b"krouter-api-key-v1\0";
/// Hex digits in a stored digest.
const DIGEST_HEX_LEN: usize = 64;

/// What is wrong with a key, key id or digest. Never holds any of the text it was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ApiKeyError {
    /// The text does not start with `sk-krouter-`.
    #[error("not a krouter API key: it does not start with `sk-krouter-`")]
    WrongPrefix,
    /// The text starts like a key but is not 41 characters long.
    #[error("the API key has the wrong length: a krouter key is 41 characters")]
    WrongLength,
    /// A character after the prefix is not one of `0-9`, `A-Z`, `a-z`.
    #[error("the API key contains a character other than 0-9, A-Z and a-z after `sk-krouter-`")]
    BadCharacter,
    /// The checksum does not match the rest of the key: a typo or a made-up key.
    #[error("the API key's checksum does not match: it was mistyped or is not a real key")]
    BadChecksum,
    /// The text is not a key id.
    #[error("not a key id: a key id is `kid_` followed by 12 characters from 0-9, A-Z and a-z")]
    BadKeyId,
    /// A stored digest is not 64 hexadecimal digits.
    #[error("an API key digest is not 64 hexadecimal digits")]
    BadDigest,
    /// The system's random number generator failed.
    #[error("the system random number generator failed")]
    Random,
}

/// A client API key (secret). Built only by [`ApiKey::generate`] or by a successful
/// [`ApiKey::parse`], so it always has the right format and checksum.
pub struct ApiKey(SecretString);

/// The public short id of a key, shown in `keys list` and in logs: `kid_` and 12 random base62
/// characters, unrelated to the key itself.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyId(String);

/// What the store keeps instead of a key: HMAC-SHA256 under `API_KEY_SECRET` over a domain
/// prefix and the key text. Compared in constant time, including through `==`.
#[derive(Clone)]
pub struct KeyDigest([u8; 32]);

// === impl ApiKey ===

impl ApiKey {
    /// A new random key.
    pub fn generate() -> Result<Self, ApiKeyError> {
        // Exact capacity: the string is never reallocated, so no unwiped copy is left behind,
        // and the conversion into the secret box keeps the same allocation.
        // A partial key left by a failing random number generator is wiped too.
        let mut text = Zeroizing::new(String::with_capacity(API_KEY_LEN));
        text.push_str(API_KEY_PREFIX);
        push_random_base62(&mut text, BODY_LEN)?;
        let checksum = checksum(text.as_bytes());
        text.extend(checksum.iter().map(|&b| char::from(b)));
        Ok(Self(SecretString::from(mem::take(&mut *text))))
    }

    /// Checks `text` (exactly, without trimming) and wraps it. The error says what is wrong,
    /// never what the text was.
    pub fn parse(text: &str) -> Result<Self, ApiKeyError> {
        let rest = text
            .strip_prefix(API_KEY_PREFIX)
            .ok_or(ApiKeyError::WrongPrefix)?;
        if rest.len() != BODY_LEN + CHECKSUM_LEN {
            return Err(ApiKeyError::WrongLength);
        }
        if !rest.bytes().all(is_base62) {
            return Err(ApiKeyError::BadCharacter);
        }
        let (signed, given) = text
            .as_bytes()
            .split_at_checked(API_KEY_LEN - CHECKSUM_LEN)
            .ok_or(ApiKeyError::WrongLength)?;
        if checksum(signed) != given {
            return Err(ApiKeyError::BadChecksum);
        }
        Ok(Self(SecretString::from(text)))
    }

    /// The key's text. Use only to show a new key once, or to digest it.
    pub fn expose_secret(&self) -> &str {
        self.0.expose_secret()
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey([redacted])")
    }
}

// === impl KeyId ===

impl KeyId {
    /// A new random key id.
    pub fn generate() -> Result<Self, ApiKeyError> {
        let mut text = String::with_capacity(KEY_ID_LEN);
        text.push_str(KEY_ID_PREFIX);
        push_random_base62(&mut text, KEY_ID_BODY_LEN)?;
        Ok(Self(text))
    }

    /// Checks that `text` is exactly `kid_` and 12 base62 characters.
    pub fn parse(text: &str) -> Result<Self, ApiKeyError> {
        let body = text
            .strip_prefix(KEY_ID_PREFIX)
            .ok_or(ApiKeyError::BadKeyId)?;
        if body.len() != KEY_ID_BODY_LEN || !body.bytes().all(is_base62) {
            return Err(ApiKeyError::BadKeyId);
        }
        Ok(Self(text.to_owned()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

// === impl DigestKey ===

/// `API_KEY_SECRET` prepared for [`KeyDigest`]s: HMAC-SHA256's key schedule (the hashed
/// inner and outer pads), computed once. The proxy digests the key of every request with it;
/// preparing the key per request cost nearly as much as the digest itself. It is as secret as
/// `API_KEY_SECRET` and prints as `DigestKey(..)`.
pub struct DigestKey(hmac::Key);

impl DigestKey {
    /// Prepares `secret` for digests.
    pub fn new(secret: &ApiKeySecret) -> Self {
        Self(hmac::Key::new(hmac::HMAC_SHA256, secret.expose_secret()))
    }

    /// The digest of `key`: HMAC-SHA256 over `krouter-api-key-v1\0` and the key's text.
    pub fn digest(&self, key: &ApiKey) -> KeyDigest {
        let mut ctx = hmac::Context::with_key(&self.0);
        ctx.update(DIGEST_CONTEXT);
        ctx.update(key.expose_secret().as_bytes());
        let tag = ctx.sign();
        let mut out = [0_u8; 32];
        for (slot, byte) in out.iter_mut().zip(tag.as_ref()) {
            *slot = *byte;
        }
        KeyDigest(out)
    }
}

impl fmt::Debug for DigestKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DigestKey(..)")
    }
}

// === impl KeyDigest ===

impl KeyDigest {
    /// The digest's bytes, for lookups.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// HMAC-SHA256 keyed with `secret` over `krouter-api-key-v1\0` and the key's text.
    /// A caller digesting many keys keeps a [`DigestKey`] instead.
    pub fn of(secret: &ApiKeySecret, key: &ApiKey) -> Self {
        DigestKey::new(secret).digest(key)
    }

    /// 64 lowercase hex digits, for storage.
    pub fn to_hex(&self) -> String {
        let mut hex = String::with_capacity(DIGEST_HEX_LEN);
        for byte in self.0 {
            hex.push(hex_digit(byte >> 4));
            hex.push(hex_digit(byte & 0x0f));
        }
        hex
    }

    /// Reads a stored digest: exactly 64 hex digits, either case.
    pub fn from_hex(text: &str) -> Result<Self, ApiKeyError> {
        if text.len() != DIGEST_HEX_LEN {
            return Err(ApiKeyError::BadDigest);
        }
        let mut out = [0_u8; 32];
        for (slot, pair) in out.iter_mut().zip(text.as_bytes().chunks_exact(2)) {
            let [high, low] = pair else {
                return Err(ApiKeyError::BadDigest);
            };
            let (Some(high), Some(low)) = (hex_value(*high), hex_value(*low)) else {
                return Err(ApiKeyError::BadDigest);
            };
            *slot = (high << 4) | low;
        }
        Ok(Self(out))
    }

    /// Whether two digests are equal, in time that does not depend on where they differ.
    pub fn ct_eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl PartialEq for KeyDigest {
    fn eq(&self, other: &Self) -> bool {
        self.ct_eq(other)
    }
}

impl Eq for KeyDigest {}

impl fmt::Debug for KeyDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hex = self.to_hex();
        let short = hex.get(..8).unwrap_or_default();
        write!(f, "KeyDigest({short}…)")
    }
}

// === helpers ===

/// Appends `count` uniformly random base62 characters to `out`.
fn push_random_base62(out: &mut String, count: usize) -> Result<(), ApiKeyError> {
    let rng = SystemRandom::new();
    let mut pushed = 0;
    for _ in 0..MAX_RANDOM_ROUNDS {
        let mut bytes = Zeroizing::new([0_u8; 32]);
        rng.fill(bytes.as_mut()).map_err(|_| ApiKeyError::Random)?;
        for &byte in bytes.iter().filter(|&&b| b < REJECT_FROM) {
            if pushed == count {
                return Ok(());
            }
            out.push(char::from(base62_byte(byte % 62)));
            pushed += 1;
        }
        if pushed == count {
            return Ok(());
        }
    }
    Err(ApiKeyError::Random)
}

/// The 6 base62 checksum characters of a key's prefix and body: the first 4 bytes of their
/// SHA-256 as a big-endian number, left-padded with `0`.
fn checksum(signed: &[u8]) -> [u8; CHECKSUM_LEN] {
    let hash = digest::digest(&SHA256, signed);
    let mut value = hash
        .as_ref()
        .iter()
        .take(4)
        .fold(0_u32, |acc, &b| (acc << 8) | u32::from(b));
    let mut out = [b'0'; CHECKSUM_LEN];
    for slot in out.iter_mut().rev() {
        let digit = u8::try_from(value % 62).unwrap_or_default();
        *slot = base62_byte(digit);
        value /= 62;
    }
    out
}

/// The base62 character for `value` (0..62): `0-9`, then `A-Z`, then `a-z`.
fn base62_byte(value: u8) -> u8 {
    match value {
        0..=9 => b'0' + value,
        10..=35 => b'A' + (value - 10),
        _ => b'a' + (value.min(61) - 36),
    }
}

fn is_base62(byte: u8) -> bool {
    byte.is_ascii_alphanumeric()
}

fn hex_digit(value: u8) -> char {
    char::from_digit(u32::from(value), 16).unwrap_or('0')
}

fn hex_value(byte: u8) -> Option<u8> {
    char::from(byte)
        .to_digit(16)
        .and_then(|v| u8::try_from(v).ok())
}

/// Fuzzing entry point: parses arbitrary UTF-8 as an API key (and as a key id and a stored
/// digest) and ignores the outcome.
#[doc(hidden)]
pub fn fuzz_parse(data: &[u8]) {
    if let Ok(text) = str::from_utf8(data) {
        let _outcome = ApiKey::parse(text);
        let _id = KeyId::parse(text);
        let _digest = KeyDigest::from_hex(text);
    }
}

#[cfg(test)]
mod tests;
