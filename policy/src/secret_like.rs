//! Detects literals that look like secrets, so that a policy or settings file that contains
//! one is refused before it is committed to Git or shipped in an image.
//!
//! The detector says *what kind* of secret a string resembles and never returns or prints
//! the string. It is deliberately eager: a false alarm costs an operator a rename, a miss
//! leaks a credential. Used by this crate's validation and by `krouter-config` for settings.

use std::fmt;
use std::sync::OnceLock;

use regex::RegexSet;

/// The kind of secret a literal resembles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SecretKind {
    /// An OpenAI-style `sk-...` API key.
    OpenAiKey,
    /// An Anthropic `sk-ant-...` API key.
    AnthropicKey,
    /// A krouter client key, `sk-krouter-...`.
    KrouterKey,
    /// An AWS access key id (`AKIA...`, `ASIA...`).
    AwsAccessKey,
    /// A Google API key (`AIza...`).
    GoogleApiKey,
    /// A GitHub token (`ghp_...`, `github_pat_...`).
    GitHubToken,
    /// A Slack token (`xoxb-...`).
    SlackToken,
    /// A Hugging Face or Groq token (`hf_...`, `gsk_...`).
    PlatformToken,
    /// A PEM private key block.
    PrivateKey,
    /// A JSON Web Token.
    Jwt,
    /// A URL with a password in its user info.
    UrlPassword,
    /// A long string with the randomness of a generated key.
    HighEntropy,
}

/// Patterns in the same order as [`KINDS`]; a match at index `i` is `KINDS[i]`.
const PATTERNS: &[&str] = &[
    r"(?:^|[^A-Za-z0-9])sk-krouter-[A-Za-z0-9]{4,}",
    r"(?:^|[^A-Za-z0-9])sk-ant-[A-Za-z0-9_-]{16,}",
    r"(?:^|[^A-Za-z0-9])sk-[A-Za-z0-9_-]{20,}",
    r"(?:^|[^A-Z0-9])(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[A-Z0-9]{16}(?:$|[^A-Z0-9])",
    r"AIza[0-9A-Za-z_-]{35}",
    r"(?:^|[^A-Za-z0-9])(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{22,})",
    r"(?:^|[^A-Za-z0-9])xox[abprs]-[A-Za-z0-9-]{10,}",
    r"(?:^|[^A-Za-z0-9])(?:hf|gsk)_[A-Za-z0-9]{20,}",
    r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY",
    r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.",
    r"[A-Za-z][A-Za-z0-9+.-]*://[^/@ \t\r\n:]*:[^/@ \t\r\n]+@",
];

const KINDS: &[SecretKind] = &[
    SecretKind::KrouterKey,
    SecretKind::AnthropicKey,
    SecretKind::OpenAiKey,
    SecretKind::AwsAccessKey,
    SecretKind::GoogleApiKey,
    SecretKind::GitHubToken,
    SecretKind::SlackToken,
    SecretKind::PlatformToken,
    SecretKind::PrivateKey,
    SecretKind::Jwt,
    SecretKind::UrlPassword,
];

/// Shortest run of key-alphabet characters judged by entropy.
const MIN_ENTROPY_RUN: usize = 24;
/// Bits per character above which a mixed-case alphanumeric run looks generated.
const ALNUM_BITS: f64 = 4.0;
/// Shortest hex run judged by entropy (a 128-bit value).
const MIN_HEX_RUN: usize = 32;
/// Bits per character above which a hex run looks generated.
const HEX_BITS: f64 = 3.0;

/// What kind of secret `text` looks like, if any.
pub fn detect(text: &str) -> Option<SecretKind> {
    if let Some(set) = patterns()
        && let Some(i) = set.matches(text).iter().next()
    {
        return KINDS.get(i).copied();
    }
    high_entropy(text).then_some(SecretKind::HighEntropy)
}

/// `text` quoted for an error message, or a placeholder when it looks like a secret.
pub fn shown(text: &str) -> String {
    if detect(text).is_some() {
        "<value hidden: looks like a secret>".to_owned()
    } else {
        format!("`{}`", text.escape_default())
    }
}

fn patterns() -> Option<&'static RegexSet> {
    static SET: OnceLock<Option<RegexSet>> = OnceLock::new();
    // The patterns are constants, checked by a unit test; `None` would only mean the regex
    // engine refused them, and then the entropy check still runs.
    SET.get_or_init(|| RegexSet::new(PATTERNS).ok()).as_ref()
}

/// True when some run of key-alphabet characters has the statistics of a random key.
fn high_entropy(text: &str) -> bool {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || "+/=_-".contains(c)))
        .any(|run| {
            // `/` belongs to base64, but also to paths: a run with a plain-word segment such as
            // `home` or `secrets` is a path, and its segments are judged one by one.
            let is_path = run.contains('/')
                && run.split('/').any(|seg| {
                    seg.len() >= 3
                        && seg
                            .bytes()
                            .all(|b| b.is_ascii_lowercase() || b == b'-' || b == b'_')
                });
            if is_path {
                run.split('/').any(random_run)
            } else {
                random_run(run)
            }
        })
}

/// Whether one run looks generated: long hex with entropy, or long mixed-case alphanumerics.
fn random_run(run: &str) -> bool {
    let bytes = run.as_bytes();
    let hex = bytes.iter().all(u8::is_ascii_hexdigit);
    if hex {
        bytes.len() >= MIN_HEX_RUN
            && bytes.iter().any(u8::is_ascii_digit)
            && bytes.iter().any(u8::is_ascii_alphabetic)
            && entropy(bytes) >= HEX_BITS
    } else {
        bytes.len() >= MIN_ENTROPY_RUN
            && bytes.iter().any(u8::is_ascii_digit)
            && bytes.iter().any(u8::is_ascii_lowercase)
            && bytes.iter().any(u8::is_ascii_uppercase)
            && entropy(bytes) >= ALNUM_BITS
    }
}

/// Shannon entropy of `bytes` in bits per byte, estimated from their own frequencies. Shared
/// with the secret strength checks in `krouter-config`.
pub fn entropy(bytes: &[u8]) -> f64 {
    let mut counts = [0u32; 256];
    for &b in bytes {
        if let Some(c) = counts.get_mut(usize::from(b)) {
            *c += 1;
        }
    }
    let len = bytes.len() as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / len;
            -p * p.log2()
        })
        .sum()
}

// === impl SecretKind ===

impl fmt::Display for SecretKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::OpenAiKey => "an OpenAI-style API key",
            Self::AnthropicKey => "an Anthropic API key",
            Self::KrouterKey => "a krouter API key",
            Self::AwsAccessKey => "an AWS access key id",
            Self::GoogleApiKey => "a Google API key",
            Self::GitHubToken => "a GitHub token",
            Self::SlackToken => "a Slack token",
            Self::PlatformToken => "an API token",
            Self::PrivateKey => "a private key",
            Self::Jwt => "a JSON Web Token",
            Self::UrlPassword => "a URL with a password",
            Self::HighEntropy => "a long random string",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds key-shaped strings at run time so that no real-looking secret is committed.
    fn random_like(prefix: &str, len: usize) -> String {
        let alphabet = b"aZ3kQ9xB7mW2pL5nR8tY4vC6dF1gH0jK";
        let mut s = prefix.to_owned();
        let mut x: u32 = 0x2545_f491;
        for _ in 0..len {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            s.push(char::from(alphabet[(x % 32) as usize]));
        }
        s
    }

    #[test]
    fn the_pattern_set_compiles() {
        assert!(patterns().is_some());
        assert_eq!(PATTERNS.len(), KINDS.len());
    }

    #[test]
    fn known_key_shapes_are_detected() {
        let cases = [
            (random_like("sk-", 40), SecretKind::OpenAiKey),
            (random_like("sk-proj-", 40), SecretKind::OpenAiKey),
            (random_like("sk-ant-api03-", 40), SecretKind::AnthropicKey),
            (random_like("sk-krouter-", 30), SecretKind::KrouterKey),
            (
                format!("AKIA{}", "Q7X2M4N6P8R1T3V5"),
                SecretKind::AwsAccessKey,
            ),
            (random_like("AIza", 35), SecretKind::GoogleApiKey),
            (random_like("ghp_", 36), SecretKind::GitHubToken),
            (random_like("hf_", 34), SecretKind::PlatformToken),
            (
                "-----BEGIN OPENSSH PRIVATE KEY-----".to_owned(),
                SecretKind::PrivateKey,
            ),
            (
                format!("{}.{}.sig", random_like("eyJ", 20), random_like("eyJ", 20)),
                SecretKind::Jwt,
            ),
            (
                "https://user:hunter2x@example.com/v1".to_owned(),
                SecretKind::UrlPassword,
            ),
            (random_like("", 40), SecretKind::HighEntropy),
            (
                "0123456789abcdef0fedcba987654321aa55".to_owned(),
                SecretKind::HighEntropy,
            ),
        ];
        for (text, kind) in cases {
            assert_eq!(detect(&text), Some(kind), "{kind:?}");
        }
    }

    #[test]
    fn ordinary_policy_strings_are_not_secrets() {
        for text in [
            "local",
            "openai-main",
            "http://127.0.0.1:11434/v1",
            "https://api.anthropic.com",
            "claude-3-5-sonnet-20241022",
            "meta-llama/Meta-Llama-3.1-405B-Instruct-Turbo",
            "gpt-4o-mini-2024-07-18",
            "llama3.1:8b-instruct-q4_K_M",
            "local:llama3.1",
            "10.0.0.0/8",
            "fd00::/8",
            "https://app.example.com",
            "task-scheduler",
            "/tmp/.tmpZx9Qw2/home/secrets/policy-signing.key",
            "/var/lib/krouter/tmpAbC123xYz789QwErTy00/home/db/store.sqlite",
            "desk-assistant-model",
            "",
        ] {
            assert_eq!(detect(text), None, "{text}");
        }
    }

    #[test]
    fn shown_hides_secrets_and_quotes_the_rest() {
        assert_eq!(shown("local"), "`local`");
        let key = random_like("sk-", 40);
        assert!(!shown(&key).contains(&key));
    }
}
