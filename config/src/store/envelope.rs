//! Field encryption for the store: the `enc:v1:` envelope.
//!
//! An envelope is `enc:v1:` followed by base64url without padding of a 12-byte random nonce,
//! the AES-256-GCM ciphertext and its 16-byte tag. The associated data binds it to one cell:
//! `krouter-store-v1\0`, then the table, column and row, each as a big-endian u32 length and
//! its bytes, so a ciphertext copied into another row, column or table does not decrypt.
//! Every [`seal`] draws a fresh nonce from the system random number generator.
//!
//! This module owns the envelope format and its size limits. It must never print, log or
//! return plaintext or key material in an error: a failure to decrypt says only that the
//! ciphertext does not belong to this row under this key.

use std::str;
use std::sync::OnceLock;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ring::aead::{self, AES_256_GCM, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom as _, SystemRandom};
use zeroize::Zeroizing;

use super::kdf::{DataKey, InstallSalt};
use crate::secret::StorageKey;

/// The largest plaintext [`seal`] accepts: 64 KiB.
pub const MAX_PLAINTEXT_LEN: usize = 64 * 1024;
/// The largest envelope [`open`] accepts: the encoding of the largest plaintext.
pub const MAX_ENVELOPE_LEN: usize =
    PREFIX.len() + base64_len(NONCE_LEN + MAX_PLAINTEXT_LEN + TAG_LEN);

/// The start of every envelope: the scheme, then this version.
const PREFIX: &str = "enc:v1:";
/// The scheme marker that says a value is an envelope of some version.
const SCHEME: &str = "enc:";
/// The version this code writes and reads.
const VERSION: &str = "v1";
/// The AES-GCM tag length.
const TAG_LEN: usize = 16;
/// The start of the associated data of every envelope.
const AAD_CONTEXT: &[u8] = b"krouter-store-v1\0";

/// Why a value could not be sealed or opened. Never holds plaintext, key material or the
/// envelope text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// The stored value does not start with `enc:`.
    #[error("the stored value is not an encrypted envelope (it does not start with `enc:`)")]
    NotAnEnvelope,
    /// The envelope's version is not `v1`.
    #[error("the envelope has a version this krouter cannot read (it reads v1)")]
    UnknownVersion,
    /// The envelope is not base64url, or is too short to hold a nonce and a tag.
    #[error("the envelope is malformed: not base64url without padding, or too short")]
    Malformed,
    /// Authentication failed: wrong key, or the ciphertext was moved or edited.
    #[error("the ciphertext does not decrypt for this row: wrong key, or it was moved or edited")]
    Decrypt,
    /// The plaintext is over 64 KiB, or the envelope is longer than one holding 64 KiB.
    #[error("the value is larger than the 64 KiB limit for an encrypted field")]
    TooLarge,
    /// A table, column or row name is longer than 4 GiB.
    #[error("a table, column or row name is too long to bind to an envelope")]
    AadTooLarge,
    /// The system's random number generator failed while making a nonce.
    #[error("the system random number generator failed")]
    Random,
    /// The encryption itself failed.
    #[error("the value could not be encrypted")]
    Encrypt,
}

/// The cell a ciphertext belongs to: table, column and row (the row's stable key, such as a
/// credential's name). Names, never secrets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Aad<'a> {
    table: &'a str,
    column: &'a str,
    row: &'a str,
}

// === impl Aad ===

impl<'a> Aad<'a> {
    /// The cell at `table`, `column`, `row`.
    pub fn new(table: &'a str, column: &'a str, row: &'a str) -> Self {
        Self { table, column, row }
    }

    /// The associated data: the context, then each part as a u32-BE length and its bytes.
    fn encode(&self) -> Result<Vec<u8>, EnvelopeError> {
        let parts = [self.table, self.column, self.row];
        let len = AAD_CONTEXT.len() + parts.iter().map(|p| 4 + p.len()).sum::<usize>();
        let mut out = Vec::with_capacity(len);
        out.extend_from_slice(AAD_CONTEXT);
        for part in parts {
            let part_len = u32::try_from(part.len()).map_err(|_| EnvelopeError::AadTooLarge)?;
            out.extend_from_slice(&part_len.to_be_bytes());
            out.extend_from_slice(part.as_bytes());
        }
        Ok(out)
    }
}

// === functions ===

/// Encrypts `plaintext` for the cell `aad` under `key`, with a fresh random nonce.
pub fn seal(key: &DataKey, aad: &Aad<'_>, plaintext: &[u8]) -> Result<String, EnvelopeError> {
    let mut nonce = [0_u8; NONCE_LEN];
    SystemRandom::new()
        .fill(&mut nonce)
        .map_err(|_| EnvelopeError::Random)?;
    seal_with_nonce(key, aad, plaintext, nonce)
}

/// Decrypts `envelope` for the cell `aad` under `key`. The plaintext is wiped when dropped.
pub fn open(
    key: &DataKey,
    aad: &Aad<'_>,
    envelope: &str,
) -> Result<Zeroizing<Vec<u8>>, EnvelopeError> {
    let versioned = envelope
        .strip_prefix(SCHEME)
        .ok_or(EnvelopeError::NotAnEnvelope)?;
    let (version, encoded) = versioned.split_once(':').ok_or(EnvelopeError::Malformed)?;
    if version != VERSION {
        return Err(EnvelopeError::UnknownVersion);
    }
    if envelope.len() > MAX_ENVELOPE_LEN {
        return Err(EnvelopeError::TooLarge);
    }
    // Decrypted in place, so the buffer is wiped on drop.
    let mut payload = Zeroizing::new(B64.decode(encoded).map_err(|_| EnvelopeError::Malformed)?);
    if payload.len() < NONCE_LEN + TAG_LEN {
        return Err(EnvelopeError::Malformed);
    }
    let (nonce, sealed) = payload
        .split_first_chunk_mut::<NONCE_LEN>()
        .ok_or(EnvelopeError::Malformed)?;
    let nonce = Nonce::assume_unique_for_key(*nonce);
    let plaintext = aead_key(key)?
        .open_in_place(nonce, aead::Aad::from(aad.encode()?), sealed)
        .map_err(|_| EnvelopeError::Decrypt)?;
    Ok(Zeroizing::new(plaintext.to_vec()))
}

/// [`seal`] with a given nonce; tests use it for known-answer vectors.
fn seal_with_nonce(
    key: &DataKey,
    aad: &Aad<'_>,
    plaintext: &[u8],
    nonce: [u8; NONCE_LEN],
) -> Result<String, EnvelopeError> {
    if plaintext.len() > MAX_PLAINTEXT_LEN {
        return Err(EnvelopeError::TooLarge);
    }
    // Sized up front and encrypted in place, so the plaintext copy is never reallocated and
    // is overwritten by ciphertext before this function returns.
    let mut payload = Zeroizing::new(Vec::with_capacity(NONCE_LEN + plaintext.len() + TAG_LEN));
    payload.extend_from_slice(&nonce);
    payload.extend_from_slice(plaintext);
    let (_, body) = payload
        .split_at_mut_checked(NONCE_LEN)
        .ok_or(EnvelopeError::Encrypt)?;
    let tag = aead_key(key)?
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            aead::Aad::from(aad.encode()?),
            body,
        )
        .map_err(|_| EnvelopeError::Encrypt)?;
    payload.extend_from_slice(tag.as_ref());
    let mut out = String::with_capacity(PREFIX.len() + base64_len(payload.len()));
    out.push_str(PREFIX);
    B64.encode_string(payload.as_slice(), &mut out);
    Ok(out)
}

fn aead_key(key: &DataKey) -> Result<LessSafeKey, EnvelopeError> {
    UnboundKey::new(&AES_256_GCM, key.expose_secret())
        .map(LessSafeKey::new)
        .map_err(|_| EnvelopeError::Encrypt)
}

/// Length of the unpadded base64 encoding of `n` bytes.
const fn base64_len(n: usize) -> usize {
    n / 3 * 4
        + match n % 3 {
            0 => 0,
            1 => 2,
            _ => 3,
        }
}

/// Fuzzing entry point: opens arbitrary UTF-8 under a fixed test key and ignores the outcome.
#[doc(hidden)]
pub fn fuzz_open(data: &[u8]) {
    static KEY: OnceLock<Option<DataKey>> = OnceLock::new();
    let key = KEY.get_or_init(|| {
        let storage_key = StorageKey::from_checked(Zeroizing::new(vec![0x4b; 32]));
        let salt = InstallSalt::from_bytes(&[0x53; 32]).ok()?;
        DataKey::derive(&storage_key, &salt).ok()
    });
    if let (Some(key), Ok(text)) = (key, str::from_utf8(data)) {
        let _outcome = open(key, &Aad::new("fuzz", "value", "row"), text);
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn data_key(byte: u8) -> DataKey {
        let storage_key = StorageKey::from_checked(Zeroizing::new(vec![byte; 32]));
        DataKey::derive(&storage_key, &InstallSalt::from_bytes(&[2; 32]).unwrap()).unwrap()
    }

    fn cell() -> Aad<'static> {
        Aad::new("credentials", "secret", "openai")
    }

    fn decoded(envelope: &str) -> Vec<u8> {
        B64.decode(envelope.strip_prefix(PREFIX).unwrap()).unwrap()
    }

    fn encoded(payload: &[u8]) -> String {
        format!("{PREFIX}{}", B64.encode(payload))
    }

    #[test]
    fn round_trips() {
        let key = data_key(1);
        for plaintext in [&b""[..], b"x", b"sk-upstream-0123456789", &[0; 1000]] {
            let envelope = seal(&key, &cell(), plaintext).unwrap();
            assert!(envelope.starts_with("enc:v1:"));
            assert_eq!(
                open(&key, &cell(), &envelope).unwrap().as_slice(),
                plaintext
            );
        }
    }

    #[test]
    fn matches_an_independent_known_answer() {
        // Made with Python's `cryptography` AESGCM: data key from storage key 32 × 0x01 and
        // salt 32 × 0x02 (see kdf.rs), nonce 00..0b, this module's AAD encoding for
        // credentials/secret/openai.
        let expected = "enc:v1:AAECAwQFBgcICQoL4wF3xJ2UBJTE5ENMv9s3RpjBCDmrvpMfV1vK2siVtUc";
        let nonce: [u8; 12] = core::array::from_fn(|i| i as u8);
        let key = data_key(1);
        let plaintext = b"sk-upstream-test";
        assert_eq!(
            seal_with_nonce(&key, &cell(), plaintext, nonce).unwrap(),
            expected
        );
        assert_eq!(open(&key, &cell(), expected).unwrap().as_slice(), plaintext);
    }

    #[test]
    fn two_seals_of_the_same_plaintext_differ() {
        let key = data_key(1);
        let a = seal(&key, &cell(), b"same").unwrap();
        let b = seal(&key, &cell(), b"same").unwrap();
        assert_ne!(a, b);
        assert_ne!(decoded(&a)[..NONCE_LEN], decoded(&b)[..NONCE_LEN]);
    }

    #[test]
    fn another_cell_does_not_decrypt() {
        let key = data_key(1);
        let envelope = seal(&key, &cell(), b"secret value").unwrap();
        for other in [
            Aad::new("providers", "secret", "openai"),
            Aad::new("credentials", "name", "openai"),
            Aad::new("credentials", "secret", "anthropic"),
            Aad::new("credentials", "secret", "openai "),
            Aad::new("credentials", "secret", ""),
            // Same concatenation, different split: the lengths keep them apart.
            Aad::new("credentialss", "ecret", "openai"),
            Aad::new("credentials", "secreto", "penai"),
        ] {
            assert_eq!(
                open(&key, &other, &envelope).unwrap_err(),
                EnvelopeError::Decrypt,
                "{other:?}"
            );
        }
    }

    #[test]
    fn aad_encoding_is_length_prefixed() {
        let encoded = Aad::new("ab", "", "c").encode().unwrap();
        let mut expected = b"krouter-store-v1\0".to_vec();
        expected.extend_from_slice(&[0, 0, 0, 2, b'a', b'b', 0, 0, 0, 0, 0, 0, 0, 1, b'c']);
        assert_eq!(encoded, expected);
    }

    #[test]
    fn the_wrong_key_does_not_decrypt() {
        let envelope = seal(&data_key(1), &cell(), b"secret value").unwrap();
        assert_eq!(
            open(&data_key(3), &cell(), &envelope).unwrap_err(),
            EnvelopeError::Decrypt
        );
    }

    #[test]
    fn flipping_any_payload_byte_does_not_decrypt() {
        let key = data_key(1);
        let payload = decoded(&seal(&key, &cell(), b"secret value").unwrap());
        for pos in 0..payload.len() {
            for bit in [0x01, 0x80] {
                let mut edited = payload.clone();
                edited[pos] ^= bit;
                assert_eq!(
                    open(&key, &cell(), &encoded(&edited)).unwrap_err(),
                    EnvelopeError::Decrypt,
                    "byte {pos}"
                );
            }
        }
    }

    #[test]
    fn editing_any_envelope_character_fails() {
        let key = data_key(1);
        let envelope = seal(&key, &cell(), b"secret value").unwrap();
        for pos in 0..envelope.len() {
            for sub in ['A', 'z', '-', '_', '=', '.', ':'] {
                let mut edited = envelope.clone();
                if edited[pos..].starts_with(sub) {
                    continue;
                }
                edited.replace_range(pos..pos + 1, sub.encode_utf8(&mut [0; 4]));
                assert!(open(&key, &cell(), &edited).is_err(), "{sub:?} at {pos}");
            }
        }
    }

    #[test]
    fn bad_envelopes_name_the_problem() {
        let key = data_key(1);
        let good = seal(&key, &cell(), b"secret value").unwrap();
        let payload = decoded(&good);
        let cases: Vec<(String, EnvelopeError)> = vec![
            (String::new(), EnvelopeError::NotAnEnvelope),
            ("plaintext".to_owned(), EnvelopeError::NotAnEnvelope),
            (
                good.replacen("enc:", "ENC:", 1),
                EnvelopeError::NotAnEnvelope,
            ),
            (format!(" {good}"), EnvelopeError::NotAnEnvelope),
            (
                good.replacen("enc:v1:", "enc:v2:", 1),
                EnvelopeError::UnknownVersion,
            ),
            (
                good.replacen("enc:v1:", "enc::", 1),
                EnvelopeError::UnknownVersion,
            ),
            (
                good.replacen("enc:v1:", "enc:V1:", 1),
                EnvelopeError::UnknownVersion,
            ),
            ("enc:v1".to_owned(), EnvelopeError::Malformed),
            ("enc:".to_owned(), EnvelopeError::Malformed),
            ("enc:v1:".to_owned(), EnvelopeError::Malformed),
            (format!("{good}="), EnvelopeError::Malformed),
            (format!("{good}!"), EnvelopeError::Malformed),
            (format!("{good} "), EnvelopeError::Malformed),
            (
                good.replace('-', "+").replace('_', "/") + "+",
                EnvelopeError::Malformed,
            ),
            (
                encoded(&payload[..NONCE_LEN + TAG_LEN - 1]),
                EnvelopeError::Malformed,
            ),
            (encoded(&[]), EnvelopeError::Malformed),
            (
                encoded(&payload[..NONCE_LEN + TAG_LEN]),
                EnvelopeError::Decrypt,
            ),
            (
                encoded(&payload[..payload.len() - 1]),
                EnvelopeError::Decrypt,
            ),
            (
                format!("{PREFIX}{}", "A".repeat(MAX_ENVELOPE_LEN)),
                EnvelopeError::TooLarge,
            ),
        ];
        for (text, expected) in cases {
            let short: String = text.chars().take(40).collect();
            assert_eq!(
                open(&key, &cell(), &text).unwrap_err(),
                expected,
                "{short:?}"
            );
        }
    }

    #[test]
    fn size_limits_are_consistent() {
        let key = data_key(1);
        let biggest = vec![7; MAX_PLAINTEXT_LEN];
        let envelope = seal(&key, &cell(), &biggest).unwrap();
        assert_eq!(envelope.len(), MAX_ENVELOPE_LEN);
        assert_eq!(open(&key, &cell(), &envelope).unwrap().as_slice(), biggest);
        assert_eq!(
            seal(&key, &cell(), &vec![7; MAX_PLAINTEXT_LEN + 1]).unwrap_err(),
            EnvelopeError::TooLarge
        );
        assert_eq!(
            open(&key, &cell(), &format!("{envelope}A")).unwrap_err(),
            EnvelopeError::TooLarge
        );
    }

    #[test]
    fn base64_len_matches_the_encoder() {
        for n in 0..50 {
            assert_eq!(base64_len(n), B64.encode(vec![0; n]).len());
        }
    }

    #[test]
    fn errors_do_not_echo_the_envelope() {
        let key = data_key(1);
        let envelope = seal(&key, &cell(), b"PLAINTEXT-MARKER").unwrap();
        for text in [
            envelope.replacen("enc:v1:", "enc:v9:", 1),
            format!("{envelope}!"),
            envelope.clone(),
        ] {
            let message = open(&data_key(3), &cell(), &text).unwrap_err().to_string();
            assert!(
                !message.contains(&envelope[PREFIX.len()..][..10]),
                "{message}"
            );
            assert!(!message.contains("PLAINTEXT"), "{message}");
            assert!(!message.contains('\n'), "{message}");
        }
    }

    #[test]
    fn fuzz_entry_point_accepts_anything() {
        fuzz_open(b"");
        fuzz_open(b"\xff");
        fuzz_open(b"enc:v1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
        fuzz_open(seal(&data_key(1), &cell(), b"x").unwrap().as_bytes());
    }

    fn envelope_like() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<String>(),
            any::<String>().prop_map(|s| format!("enc:{s}")),
            "[A-Za-z0-9_=+/-]{0,120}".prop_map(|s| format!("{PREFIX}{s}")),
        ]
    }

    proptest! {
        #[test]
        fn seal_then_open_round_trips(
            plaintext in proptest::collection::vec(any::<u8>(), 0..=4096),
            table in any::<String>(),
            column in any::<String>(),
            row in any::<String>(),
        ) {
            let key = data_key(1);
            let aad = Aad::new(&table, &column, &row);
            let envelope = seal(&key, &aad, &plaintext).unwrap();
            let opened = open(&key, &aad, &envelope).unwrap();
            prop_assert_eq!(opened.as_slice(), plaintext.as_slice());
        }

        #[test]
        fn another_cell_never_decrypts(
            a in proptest::collection::vec(".{0,8}", 3),
            b in proptest::collection::vec(".{0,8}", 3),
        ) {
            prop_assume!(a != b);
            let key = data_key(1);
            let envelope = seal(&key, &Aad::new(&a[0], &a[1], &a[2]), b"value").unwrap();
            prop_assert_eq!(
                open(&key, &Aad::new(&b[0], &b[1], &b[2]), &envelope).unwrap_err(),
                EnvelopeError::Decrypt
            );
        }

        #[test]
        fn open_never_panics(text in envelope_like()) {
            let _outcome = open(&data_key(1), &cell(), &text);
        }
    }
}
