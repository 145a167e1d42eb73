//! Ed25519 policy signatures: the detached `.sig` format, trusted public keys (`*.pub`) and
//! the signing key (admin only).
//!
//! The signed message is [`SIGNATURE_CONTEXT`] followed by the policy file's exact bytes, so
//! a krouter policy signature can never be replayed as a signature over anything else, and
//! nothing (line endings, a BOM, re-serialization) is normalized before verifying. All three
//! file formats are short text files, one `name: value` per line after a fixed first line:
//!
//! ```text
//! krouter policy signature v1        krouter policy public key v1
//! key-id: 3f2a9c1b7d4e8f60           key-id: 3f2a9c1b7d4e8f60
//! signature: <base64, 64 bytes>      public-key: <base64, 32 bytes>
//! ```
//!
//! A key id is the first 8 bytes of a domain-separated SHA-256 of the public key, in hex; it is
//! recomputed on every load, so a file cannot claim another key's id.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use curve25519_dalek::edwards::CompressedEdwardsY;
use ring::rand::SystemRandom;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey};
use secrecy::{ExposeSecret as _, SecretString};
use zeroize::Zeroizing;

use crate::error::{KeyFileError, SignatureError};

/// Prefix of every signed message: a fixed context string, then the policy bytes.
pub const SIGNATURE_CONTEXT: &[u8] = b"krouter-policy-signature-v1\0";

const KEY_ID_CONTEXT: &[u8] = b"krouter-policy-key-id-v1\0";
const SIG_HEADER: &str = "krouter policy signature v1";
const PUB_HEADER: &str = "krouter policy public key v1";
const KEY_HEADER: &str = "krouter policy signing key v1";
/// Largest `.sig` or `.pub` file accepted; real ones are under 200 bytes.
const MAX_SMALL_FILE: usize = 4096;

/// Short public name of a signing key: 16 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyId(String);

/// A parsed detached signature: which key made it and the signature bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicySignature {
    key_id: KeyId,
    signature: [u8; 64],
}

/// A public key the proxy trusts to sign policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedKey {
    key_id: KeyId,
    public: [u8; 32],
}

/// The set of trusted public keys, by key id.
#[derive(Debug, Clone, Default)]
pub struct TrustedKeys {
    keys: BTreeMap<KeyId, TrustedKey>,
}

/// The private policy signing key. Held only by `krouter-admin`; never printed.
pub struct SigningKey {
    pair: Ed25519KeyPair,
    key_id: KeyId,
}

/// The text of a new signing key file (secret): write it to a 0600 file and drop it.
pub struct SigningKeyFile(SecretString);

// === impl KeyId ===

impl KeyId {
    fn of(public: &[u8]) -> Self {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(KEY_ID_CONTEXT);
        ctx.update(public);
        let digest = ctx.finish();
        let hex = digest
            .as_ref()
            .iter()
            .take(8)
            .map(|b| format!("{b:02x}"))
            .collect();
        Self(hex)
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

// === impl PolicySignature ===

impl PolicySignature {
    /// Parses a `.sig` file; `file` is its display name for errors.
    pub fn parse(file: &str, bytes: &[u8]) -> Result<Self, SignatureError> {
        let malformed = |line: usize, what: &'static str| SignatureError::Malformed {
            file: file.to_owned(),
            line,
            what,
        };
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(SignatureError::Empty {
                file: file.to_owned(),
            });
        }
        let fields = fields(bytes, SIG_HEADER, &["key-id", "signature"])
            .map_err(|(line, what)| malformed(line, what))?;
        let [key_id, signature] = fields;
        let key_id =
            parse_key_id(&key_id).ok_or_else(|| malformed(2, "key-id is not 16 hex digits"))?;
        let signature = decode_exact::<64>(&signature)
            .ok_or_else(|| malformed(3, "signature is not base64 of 64 bytes"))?;
        Ok(Self { key_id, signature })
    }

    /// The key id the signature names.
    pub fn key_id(&self) -> &KeyId {
        &self.key_id
    }

    /// The `.sig` file text.
    pub fn to_file_text(&self) -> String {
        format!(
            "{SIG_HEADER}\nkey-id: {}\nsignature: {}\n",
            self.key_id,
            B64.encode(self.signature)
        )
    }
}

// === impl TrustedKey ===

impl TrustedKey {
    /// Parses a `.pub` file; `file` is its display name for errors.
    pub fn parse(file: &str, bytes: &[u8]) -> Result<Self, KeyFileError> {
        let malformed = |line: usize, what: &'static str| KeyFileError::Malformed {
            file: file.to_owned(),
            line,
            what,
        };
        let [key_id, public] = fields(bytes, PUB_HEADER, &["key-id", "public-key"])
            .map_err(|(line, what)| malformed(line, what))?;
        let key_id =
            parse_key_id(&key_id).ok_or_else(|| malformed(2, "key-id is not 16 hex digits"))?;
        let public = decode_exact::<32>(&public)
            .ok_or_else(|| malformed(3, "public-key is not base64 of 32 bytes"))?;
        if !is_strong_public_key(&public) {
            return Err(KeyFileError::WeakKey {
                file: file.to_owned(),
            });
        }
        if KeyId::of(&public) != key_id {
            return Err(KeyFileError::KeyIdMismatch {
                file: file.to_owned(),
            });
        }
        Ok(Self { key_id, public })
    }

    /// The key's id.
    pub fn key_id(&self) -> &KeyId {
        &self.key_id
    }

    /// The `.pub` file text.
    pub fn to_file_text(&self) -> String {
        format!(
            "{PUB_HEADER}\nkey-id: {}\npublic-key: {}\n",
            self.key_id,
            B64.encode(self.public)
        )
    }
}

// === impl TrustedKeys ===

impl TrustedKeys {
    /// An empty set; nothing verifies against it.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a key; a second file with the same key id is refused.
    pub fn insert(&mut self, file: &str, key: TrustedKey) -> Result<(), KeyFileError> {
        if self.keys.contains_key(&key.key_id) {
            return Err(KeyFileError::Duplicate {
                file: file.to_owned(),
                key_id: key.key_id.0,
            });
        }
        self.keys.insert(key.key_id.clone(), key);
        Ok(())
    }

    /// Parses a `.pub` file and adds it.
    pub fn add_file(&mut self, file: &str, bytes: &[u8]) -> Result<&KeyId, KeyFileError> {
        let key = TrustedKey::parse(file, bytes)?;
        let id = key.key_id.clone();
        self.insert(file, key)?;
        self.keys
            .get(&id)
            .map(|k| &k.key_id)
            .ok_or(KeyFileError::Generate)
    }

    /// How many keys are trusted.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True when no key is trusted.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The trusted key ids.
    pub fn key_ids(&self) -> impl Iterator<Item = &KeyId> {
        self.keys.keys()
    }

    /// Parses `sig_bytes` and verifies it over `policy` with the key it names.
    pub fn verify(
        &self,
        policy_file: &str,
        policy: &[u8],
        sig_file: &str,
        sig_bytes: &[u8],
    ) -> Result<KeyId, SignatureError> {
        if self.keys.is_empty() {
            return Err(SignatureError::NoTrustedKeys);
        }
        if sig_bytes.len() > MAX_SMALL_FILE {
            return Err(SignatureError::Malformed {
                file: sig_file.to_owned(),
                line: 1,
                what: "the file is too large to be a signature",
            });
        }
        let sig = PolicySignature::parse(sig_file, sig_bytes)?;
        let key = self
            .keys
            .get(&sig.key_id)
            .ok_or_else(|| SignatureError::UntrustedKey {
                file: sig_file.to_owned(),
                key_id: sig.key_id.0.clone(),
            })?;
        let message = signed_message(policy);
        UnparsedPublicKey::new(&ED25519, &key.public)
            .verify(&message, &sig.signature)
            .map_err(|_| SignatureError::Mismatch {
                file: policy_file.to_owned(),
                key_id: sig.key_id.0.clone(),
            })?;
        Ok(sig.key_id)
    }
}

// === impl SigningKey ===

impl SigningKey {
    /// A fresh key from the system random generator, and the text of its key file.
    pub fn generate() -> Result<(Self, SigningKeyFile), KeyFileError> {
        let rng = SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| KeyFileError::Generate)?;
        let pair =
            Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|_| KeyFileError::Generate)?;
        let key_id = KeyId::of(pair.public_key().as_ref());
        let encoded = Zeroizing::new(B64.encode(pkcs8.as_ref()));
        let text = format!(
            "{KEY_HEADER}\nkey-id: {key_id}\npkcs8: {}\n",
            encoded.as_str()
        );
        Ok((
            Self { pair, key_id },
            SigningKeyFile(SecretString::from(text)),
        ))
    }

    /// Parses a signing key file; `file` is its display name for errors.
    pub fn parse(file: &str, bytes: &[u8]) -> Result<Self, KeyFileError> {
        let malformed = |line: usize, what: &'static str| KeyFileError::Malformed {
            file: file.to_owned(),
            line,
            what,
        };
        let [key_id, pkcs8] = fields(bytes, KEY_HEADER, &["key-id", "pkcs8"])
            .map_err(|(line, what)| malformed(line, what))?;
        let pkcs8 = Zeroizing::new(pkcs8);
        let key_id =
            parse_key_id(&key_id).ok_or_else(|| malformed(2, "key-id is not 16 hex digits"))?;
        let der = Zeroizing::new(
            B64.decode(pkcs8.as_bytes())
                .map_err(|_| malformed(3, "pkcs8 is not base64"))?,
        );
        let pair = Ed25519KeyPair::from_pkcs8(&der)
            .map_err(|_| malformed(3, "pkcs8 is not an Ed25519 private key"))?;
        if KeyId::of(pair.public_key().as_ref()) != key_id {
            return Err(KeyFileError::KeyIdMismatch {
                file: file.to_owned(),
            });
        }
        Ok(Self { pair, key_id })
    }

    /// The key's id, as written in signatures.
    pub fn key_id(&self) -> &KeyId {
        &self.key_id
    }

    /// The matching public key, to install as trusted.
    pub fn trusted_key(&self) -> TrustedKey {
        let mut public = [0u8; 32];
        public.copy_from_slice(self.pair.public_key().as_ref());
        TrustedKey {
            key_id: self.key_id.clone(),
            public,
        }
    }

    /// Signs the policy file's exact bytes.
    pub fn sign(&self, policy: &[u8]) -> PolicySignature {
        let sig = self.pair.sign(&signed_message(policy));
        let mut signature = [0u8; 64];
        signature.copy_from_slice(sig.as_ref());
        PolicySignature {
            key_id: self.key_id.clone(),
            signature,
        }
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("key_id", &self.key_id)
            .field("secret", &"[redacted]")
            .finish()
    }
}

// === impl SigningKeyFile ===

impl SigningKeyFile {
    /// The secret file text, to be written to a 0600 file and nowhere else.
    pub fn expose_secret(&self) -> &str {
        self.0.expose_secret()
    }
}

impl fmt::Debug for SigningKeyFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningKeyFile([redacted])")
    }
}

/// Whether `public` is a canonically encoded Ed25519 point outside the small-order subgroup.
///
/// A small-order public key (the identity, for one) accepts forged signatures over any
/// message, and ring's verifier does not refuse one, so a trusted key is checked here once,
/// when its file is read. Keys made by `SigningKey` always pass.
fn is_strong_public_key(public: &[u8; 32]) -> bool {
    let compressed = CompressedEdwardsY(*public);
    compressed
        .decompress()
        .is_some_and(|point| !point.is_small_order() && point.compress() == compressed)
}

/// The domain-separated message a signature covers.
fn signed_message(policy: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(SIGNATURE_CONTEXT.len() + policy.len());
    message.extend_from_slice(SIGNATURE_CONTEXT);
    message.extend_from_slice(policy);
    message
}

/// Reads a small key-value file: `header`, then one `name: value` line per name, in order.
/// Accepts LF or CRLF line ends and one optional final newline; nothing else.
fn fields<const N: usize>(
    bytes: &[u8],
    header: &str,
    names: &[&str; N],
) -> Result<[String; N], (usize, &'static str)> {
    if bytes.len() > MAX_SMALL_FILE {
        return Err((1, "the file is too large"));
    }
    let text = std::str::from_utf8(bytes).map_err(|_| (1, "the file is not UTF-8 text"))?;
    let text = text.strip_suffix('\n').unwrap_or(text);
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    if lines.next() != Some(header) {
        return Err((1, "the first line is not the expected header"));
    }
    let mut out: [String; N] = std::array::from_fn(|_| String::new());
    for (i, (name, slot)) in names.iter().zip(out.iter_mut()).enumerate() {
        let line_no = i + 2;
        let line = lines.next().ok_or((line_no, "the file ends early"))?;
        let value = line
            .strip_prefix(name)
            .and_then(|rest| rest.strip_prefix(": "))
            .ok_or((line_no, "unexpected line: fields are fixed and in order"))?;
        *slot = value.to_owned();
    }
    if lines.next().is_some() {
        return Err((N + 2, "unexpected extra line"));
    }
    Ok(out)
}

fn parse_key_id(text: &str) -> Option<KeyId> {
    (text.len() == 16 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        .then(|| KeyId(text.to_owned()))
}

fn decode_exact<const N: usize>(text: &str) -> Option<[u8; N]> {
    let bytes = B64.decode(text).ok()?;
    bytes.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keypair() -> (SigningKey, TrustedKeys) {
        let (key, _file) = SigningKey::generate().unwrap();
        let mut trusted = TrustedKeys::new();
        trusted.insert("k.pub", key.trusted_key()).unwrap();
        (key, trusted)
    }

    #[test]
    fn a_signature_round_trips_through_its_file() {
        let (key, trusted) = keypair();
        let sig = key.sign(b"serial = 1\n");
        let text = sig.to_file_text();
        let id = trusted
            .verify("p", b"serial = 1\n", "p.sig", text.as_bytes())
            .unwrap();
        assert_eq!(&id, key.key_id());
        let crlf = text.replace('\n', "\r\n");
        assert!(
            trusted
                .verify("p", b"serial = 1\n", "p.sig", crlf.as_bytes())
                .is_ok()
        );
    }

    #[test]
    fn one_changed_byte_is_a_mismatch() {
        let (key, trusted) = keypair();
        let sig = key.sign(b"serial = 1\n").to_file_text();
        let err = trusted
            .verify("p", b"serial = 2\n", "p.sig", sig.as_bytes())
            .unwrap_err();
        assert!(matches!(err, SignatureError::Mismatch { .. }), "{err}");
    }

    #[test]
    fn a_signature_by_an_unknown_key_is_untrusted() {
        let (other, _) = keypair();
        let (_, trusted) = keypair();
        let sig = other.sign(b"x").to_file_text();
        let err = trusted
            .verify("p", b"x", "p.sig", sig.as_bytes())
            .unwrap_err();
        assert!(matches!(err, SignatureError::UntrustedKey { .. }), "{err}");
        let err = TrustedKeys::new()
            .verify("p", b"x", "p.sig", sig.as_bytes())
            .unwrap_err();
        assert!(matches!(err, SignatureError::NoTrustedKeys));
    }

    #[test]
    fn the_context_string_is_part_of_the_message() {
        let (key, _) = keypair();
        let public = key.trusted_key().public;
        let sig = key.sign(b"abc");
        let raw = UnparsedPublicKey::new(&ED25519, &public);
        assert!(raw.verify(b"abc", &sig.signature).is_err());
        assert!(raw.verify(&signed_message(b"abc"), &sig.signature).is_ok());
    }

    #[test]
    fn malformed_signature_files_say_where() {
        let (key, trusted) = keypair();
        let good = key.sign(b"x").to_file_text();
        let cases: Vec<(String, usize)> = vec![
            ("not a signature\n".into(), 1),
            (good.replace("key-id:", "keyid:"), 2),
            (good.replace("signature: ", "signature: !!"), 3),
            (format!("{good}extra\n"), 4),
            (good.lines().take(2).collect::<Vec<_>>().join("\n"), 3),
        ];
        for (text, want) in cases {
            match trusted.verify("p", b"x", "p.sig", text.as_bytes()) {
                Err(SignatureError::Malformed { line, .. }) => assert_eq!(line, want, "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
        assert!(matches!(
            trusted.verify("p", b"x", "p.sig", b"  \n"),
            Err(SignatureError::Empty { .. })
        ));
        assert!(matches!(
            trusted.verify("p", b"x", "p.sig", &[b'a'; 5000]),
            Err(SignatureError::Malformed { .. })
        ));
    }

    #[test]
    fn key_files_round_trip_and_their_ids_are_checked() {
        let (key, file) = SigningKey::generate().unwrap();
        let again = SigningKey::parse("k", file.expose_secret().as_bytes()).unwrap();
        assert_eq!(again.key_id(), key.key_id());
        let public = key.trusted_key().to_file_text();
        assert_eq!(
            TrustedKey::parse("k.pub", public.as_bytes()).unwrap(),
            key.trusted_key()
        );

        let (other, _) = SigningKey::generate().unwrap();
        let lying = public.replace(key.key_id().as_str(), other.key_id().as_str());
        assert!(matches!(
            TrustedKey::parse("k.pub", lying.as_bytes()),
            Err(KeyFileError::KeyIdMismatch { .. })
        ));
        let mut trusted = TrustedKeys::new();
        trusted.add_file("a.pub", public.as_bytes()).unwrap();
        assert!(matches!(
            trusted.add_file("b.pub", public.as_bytes()),
            Err(KeyFileError::Duplicate { .. })
        ));
    }

    #[test]
    fn small_order_and_non_canonical_public_keys_are_refused() {
        // The identity point: with it, (R = identity, S = 0) verifies over any message.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        // y = p - 1 (order 2), and a non-canonical y >= p (2^255 - 1).
        let mut order_two = [0xffu8; 32];
        order_two[0] = 0xec;
        order_two[31] = 0x7f;
        let mut non_canonical = [0xffu8; 32];
        non_canonical[31] = 0x7f;
        for public in [identity, order_two, [0u8; 32], non_canonical] {
            let text = format!(
                "{PUB_HEADER}\nkey-id: {}\npublic-key: {}\n",
                KeyId::of(&public),
                B64.encode(public)
            );
            let err = TrustedKey::parse("weak.pub", text.as_bytes()).unwrap_err();
            assert!(
                matches!(
                    err,
                    KeyFileError::WeakKey { .. } | KeyFileError::Malformed { .. }
                ),
                "{err}"
            );
        }
        // And the forgery itself is refused because the key never becomes trusted.
        let text = format!(
            "{PUB_HEADER}\nkey-id: {}\npublic-key: {}\n",
            KeyId::of(&identity),
            B64.encode(identity)
        );
        let mut trusted = TrustedKeys::new();
        assert!(trusted.add_file("weak.pub", text.as_bytes()).is_err());
        assert!(trusted.is_empty());
        let (key, _) = SigningKey::generate().unwrap();
        assert!(is_strong_public_key(&key.trusted_key().public));
    }

    #[test]
    fn debug_never_shows_the_private_key() {
        let (key, file) = SigningKey::generate().unwrap();
        let secret_line = file.expose_secret().lines().nth(2).unwrap().to_owned();
        let debug = format!("{key:?} {file:?}");
        assert!(debug.contains("[redacted]"));
        assert!(!debug.contains(&secret_line[8..]));
    }
}
