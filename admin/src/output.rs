//! The one renderer: short human-readable text by default, JSON with `--json`. Outcomes
//! never carry a secret, so nothing here needs masking.

use std::io::Write as _;
use std::path::PathBuf;

use krouter_policy::Summary;
use serde::Serialize;

use crate::error::Error;

/// What a successful command reports.
#[derive(Debug, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Outcome {
    /// `policy keygen` made a key pair.
    KeyCreated {
        /// The new key's id.
        key_id: String,
        /// The private key file (0600).
        private_key: PathBuf,
        /// The public key file, to install as trusted.
        public_key: PathBuf,
    },
    /// `policy sign` wrote a signature.
    Signed {
        /// The signature file written.
        signature: PathBuf,
        /// The policy that was signed.
        #[serde(flatten)]
        summary: Summary,
    },
    /// `policy verify` accepted the policy.
    Verified {
        /// The policy that verified.
        #[serde(flatten)]
        summary: Summary,
    },
    /// `policy check` found the policy valid.
    Valid {
        /// The policy that was checked.
        #[serde(flatten)]
        summary: Summary,
    },
}

/// Prints a successful outcome on stdout.
pub fn print_outcome(outcome: &Outcome, json: bool) {
    let text = if json {
        serde_json::to_string_pretty(outcome).unwrap_or_default()
    } else {
        human(outcome)
    };
    let _written = writeln!(std::io::stdout().lock(), "{text}");
}

/// Prints an error: the message and its cause chain on stderr, and with `--json` an
/// object on stdout too, so that scripts read one stream.
pub fn print_error(error: &Error, json: bool) {
    let mut lines = vec![format!("error: {error}")];
    let problems = error.problems();
    if problems.is_empty() {
        let mut source = std::error::Error::source(error);
        while let Some(cause) = source {
            lines.push(format!("  caused by: {cause}"));
            source = cause.source();
        }
    } else {
        lines = vec![format!(
            "error: invalid policy: {} problem{}",
            problems.len(),
            if problems.len() == 1 { "" } else { "s" }
        )];
        lines.extend(problems.iter().map(|p| format!("  {p}")));
    }
    let _written = writeln!(std::io::stderr().lock(), "{}", lines.join("\n"));
    if json {
        #[derive(Serialize)]
        struct JsonError<'a> {
            result: &'static str,
            exit_code: u8,
            error: String,
            problems: &'a [crate::error::ProblemLine],
        }
        let body = JsonError {
            result: "error",
            exit_code: error.status().code(),
            error: error.to_string(),
            problems: &problems,
        };
        let text = serde_json::to_string_pretty(&body).unwrap_or_default();
        let _written = writeln!(std::io::stdout().lock(), "{text}");
    }
}

fn human(outcome: &Outcome) -> String {
    match outcome {
        Outcome::KeyCreated {
            key_id,
            private_key,
            public_key,
        } => format!(
            "created policy signing key {key_id}\n  private key  {} (keep it secret; never commit it)\n  public key   {} (copy it into the proxy's policy/trusted/ directory)",
            private_key.display(),
            public_key.display()
        ),
        Outcome::Signed { signature, summary } => format!(
            "signed serial {} with key {}\n  signature  {}\n  sha256     {}",
            summary.serial,
            summary.signed_by.as_deref().unwrap_or("?"),
            signature.display(),
            summary.sha256
        ),
        Outcome::Verified { summary } => format!(
            "signature OK: key {}, serial {}\n{}",
            summary.signed_by.as_deref().unwrap_or("?"),
            summary.serial,
            table(summary)
        ),
        Outcome::Valid { summary } => format!(
            "policy is valid (signature not checked), serial {}\n{}",
            summary.serial,
            table(summary)
        ),
    }
}

fn table(summary: &Summary) -> String {
    let list = |items: &[String]| {
        if items.is_empty() {
            "(none)".to_owned()
        } else {
            items.join(", ")
        }
    };
    format!(
        "  sha256     {}\n  api keys   {}\n  providers  {}\n  routes     {}\n  groups     {}",
        summary.sha256,
        if summary.require_api_keys {
            "required"
        } else {
            "NOT required"
        },
        list(&summary.providers),
        list(&summary.routes),
        list(&summary.groups)
    )
}
