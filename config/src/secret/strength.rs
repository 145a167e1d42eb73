//! Refuses weak secrets at start-up: too short, a known-weak value, or too little entropy.
//! Every problem names the secret and what is wrong with it, never the value.

use std::fmt;

use krouter_policy::secret_like;

use crate::secret::SecretName;

/// Fewest bytes any krouter secret may have (32 random bytes, or a longer encoding of them).
pub const MIN_SECRET_BYTES: usize = 32;
/// Fewest estimated bits of entropy (Shannon estimate × length).
const MIN_ESTIMATED_BITS: f64 = 128.0;
/// Fewest distinct byte values; rules out repeated characters and short cycles.
const MIN_DISTINCT: usize = 10;

/// Words that make a secret guessable wherever they appear in it.
const WEAK_WORDS: &[&str] = &[
    "changeme",
    "change-me",
    "change_me",
    "secret",
    "password",
    "passw0rd",
    "letmein",
    "admin",
    "default",
    "example",
    "qwerty",
    "123456",
    "abcdef",
    "krouter",
    "insecure",
    "dummy",
];

/// What is wrong with a secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Weakness {
    /// Fewer than [`MIN_SECRET_BYTES`] bytes.
    TooShort {
        /// How many bytes it has.
        got: usize,
    },
    /// Contains a well-known weak word.
    KnownWeak,
    /// Repeats a few characters, or its estimated entropy is too low.
    LowEntropy,
}

/// Checks `bytes` as the secret `name`.
pub fn check(name: SecretName, bytes: &[u8]) -> Result<(), (SecretName, Weakness)> {
    if bytes.len() < MIN_SECRET_BYTES {
        return Err((name, Weakness::TooShort { got: bytes.len() }));
    }
    let lower = bytes.to_ascii_lowercase();
    if WEAK_WORDS
        .iter()
        .any(|w| lower.windows(w.len()).any(|window| window == w.as_bytes()))
    {
        return Err((name, Weakness::KnownWeak));
    }
    let distinct = bytes
        .iter()
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    let estimated_bits = secret_like::entropy(bytes) * bytes.len() as f64;
    if distinct < MIN_DISTINCT || estimated_bits < MIN_ESTIMATED_BITS {
        return Err((name, Weakness::LowEntropy));
    }
    Ok(())
}

impl fmt::Display for Weakness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooShort { got } => write!(
                f,
                "is {got} bytes; it must be at least {MIN_SECRET_BYTES} random bytes (e.g. `openssl rand -base64 32`)"
            ),
            Self::KnownWeak => f.write_str("contains a well-known weak word; generate a random value"),
            Self::LowEntropy => f.write_str(
                "does not look random (repeated characters or too little entropy); generate a random value",
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const N: SecretName = SecretName::StorageKey;

    #[test]
    fn weak_secrets_are_refused_with_a_reason() {
        let cases: [(&[u8], Weakness); 6] = [
            (b"short", Weakness::TooShort { got: 5 }),
            (b"", Weakness::TooShort { got: 0 }),
            (b"changemechangemechangemechangeme!!", Weakness::KnownWeak),
            (b"x7Qp2MaSecReT9zLw4Rt8Yk1Vb6Nc3Hd5", Weakness::KnownWeak),
            (&[b'a'; 64], Weakness::LowEntropy),
            (
                b"abcabcabcabcabcabcabcabcabcabcabcabc",
                Weakness::LowEntropy,
            ),
        ];
        for (bytes, want) in cases {
            assert_eq!(
                check(N, bytes),
                Err((N, want)),
                "{}",
                String::from_utf8_lossy(bytes)
            );
        }
        // 32 hex characters carry only 128 bits: below the 32-random-byte bar.
        assert_eq!(
            check(N, b"0f3a9c1b7d4e8f6021a5c3e7b9d1f0a4"),
            Err((N, Weakness::LowEntropy))
        );
    }

    #[test]
    fn generated_secrets_pass() {
        // Shapes of what `openssl rand -base64 32`, `-hex 32` and raw random bytes give.
        let base64 = b"q8Z3kV0m9XcT1rL7pW4nB6yH2dF5sJ0aQeU8iO3gK1w=";
        let hex = b"3f9a0c7e1b2d4f6a8c0e2b4d6f8a1c3e5b7d9f0a2c4e6b8d0f1a3c5e7b9d2f4a";
        let raw: Vec<u8> = (0u8..32)
            .map(|i| i.wrapping_mul(73).wrapping_add(19))
            .collect();
        for bytes in [&base64[..], &hex[..], &raw[..]] {
            assert_eq!(
                check(N, bytes),
                Ok(()),
                "{}",
                String::from_utf8_lossy(bytes)
            );
        }
    }

    #[test]
    fn messages_never_hold_the_value() {
        for w in [
            Weakness::TooShort { got: 3 },
            Weakness::KnownWeak,
            Weakness::LowEntropy,
        ] {
            assert!(!w.to_string().contains("abc"));
        }
    }
}
