//! The one renderer: short human-readable text and tables by default, JSON with `--json`.
//! The only secret an outcome can carry is a new API key shown once, held in [`ShownOnce`],
//! whose `Debug` is redacted.

use std::fmt;
use std::io::Write as _;
use std::path::PathBuf;
use std::time::{Duration, UNIX_EPOCH};

use krouter_config::apikey::ApiKey;
use krouter_policy::Summary;
use serde::{Serialize, Serializer};

use crate::error::Error;

mod usage;

pub use usage::{RowName, UsageLine, UsageOutcome};

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
    /// `init` made a new home.
    Initialized {
        /// The home directory.
        home: PathBuf,
        /// Secrets generated into `secrets/` (names only).
        generated: Vec<String>,
        /// Secrets taken from the environment or `NAME_FILE` (names only).
        supplied: Vec<String>,
        /// The policy signing key's id.
        signing_key_id: String,
    },
    /// `keys create` or `keys rotate` made a key.
    ApiKeyCreated {
        /// The new key.
        #[serde(flatten)]
        key: KeyRow,
        /// The key itself, shown this once (absent when written to a file).
        #[serde(skip_serializing_if = "Option::is_none")]
        secret: Option<ShownOnce>,
        /// The file the key was written to.
        #[serde(skip_serializing_if = "Option::is_none")]
        written_to: Option<PathBuf>,
        /// For a rotation: the old key and when it stops working.
        #[serde(skip_serializing_if = "Option::is_none")]
        replaces: Option<KeyRow>,
    },
    /// `keys list`.
    Keys {
        /// Every key.
        keys: Vec<KeyRow>,
    },
    /// `keys revoke`.
    KeyRevoked {
        /// The revoked key.
        #[serde(flatten)]
        key: KeyRow,
    },
    /// `credentials set`.
    CredentialSet {
        /// Its name.
        name: String,
        /// What it is for.
        kind: &'static str,
        /// Its fingerprint.
        fingerprint: String,
    },
    /// `credentials list`.
    Credentials {
        /// Every credential, without values.
        credentials: Vec<CredentialRow>,
    },
    /// `credentials remove`.
    CredentialRemoved {
        /// Its name.
        name: String,
    },
    /// `store migrate`.
    Migrated {
        /// Schema version before.
        from: i64,
        /// Schema version after.
        to: i64,
    },
    /// `store verify`.
    StoreVerified {
        /// The schema version.
        schema: i64,
        /// API key rows whose MAC verified.
        keys: usize,
        /// Credentials that decrypted.
        credentials: usize,
        /// Audit rows that verified.
        audit_rows: usize,
    },
    /// `store rekey`.
    Rekeyed {
        /// Credentials re-encrypted.
        credentials: usize,
        /// Where the new key was written, if krouter-admin generated or holds it.
        #[serde(skip_serializing_if = "Option::is_none")]
        key_file: Option<PathBuf>,
    },
    /// `store backup`.
    BackedUp {
        /// The backup file.
        out: PathBuf,
    },
    /// `audit list`.
    Audit {
        /// Every row, oldest first.
        rows: Vec<AuditRow>,
    },
    /// `audit verify`.
    AuditVerified {
        /// Rows that verified.
        rows: usize,
    },
    /// `usage`.
    Usage(UsageOutcome),
}

/// A new API key, shown exactly once. `Debug` is redacted; only serialization exposes it.
pub struct ShownOnce(pub ApiKey);

/// One API key, as lists show it.
#[derive(Debug, Clone, Serialize)]
pub struct KeyRow {
    /// Public id.
    pub id: String,
    /// Label.
    pub label: String,
    /// Group.
    pub group: String,
    /// Created, RFC 3339.
    pub created: String,
    /// Expires, RFC 3339.
    pub expires: Option<String>,
    /// Revoked, RFC 3339.
    pub revoked: Option<String>,
    /// `active`, `expired` or `revoked`.
    pub status: &'static str,
}

/// One credential, as lists show it.
#[derive(Debug, Clone, Serialize)]
pub struct CredentialRow {
    /// Name.
    pub name: String,
    /// What it is for.
    pub kind: &'static str,
    /// Fingerprint.
    pub fingerprint: String,
    /// First set, RFC 3339.
    pub created: String,
    /// Last set, RFC 3339.
    pub updated: String,
}

/// One audit row, as lists show it.
#[derive(Debug, Clone, Serialize)]
pub struct AuditRow {
    /// Position.
    pub seq: i64,
    /// When, RFC 3339.
    pub at: String,
    /// Who.
    pub actor: String,
    /// What.
    pub action: String,
    /// On what.
    pub target: String,
    /// How it ended.
    pub outcome: String,
}

/// The last second RFC 3339 can write (9999-12-31T23:59:59Z).
const LAST_RFC3339: i64 = 253_402_300_799;

/// Unix seconds as RFC 3339 UTC; a time outside years 1970-9999 (only a tampered store holds
/// one) is shown as its raw number instead.
pub fn time(secs: i64) -> String {
    if !(0..=LAST_RFC3339).contains(&secs) {
        return format!("@{secs}");
    }
    let t = UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs());
    let mut out = String::new();
    match fmt::write(
        &mut out,
        format_args!("{}", humantime::format_rfc3339_seconds(t)),
    ) {
        Ok(()) => out,
        Err(_) => format!("@{secs}"),
    }
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
            policy_table(summary)
        ),
        Outcome::Valid { summary } => format!(
            "policy is valid (signature not checked), serial {}\n{}",
            summary.serial,
            policy_table(summary)
        ),
        Outcome::Initialized {
            home,
            generated,
            supplied,
            signing_key_id,
        } => {
            format!(
                "initialized krouter home {}\n  secrets generated  {}\n  secrets supplied   {}\n  signing key        {signing_key_id}\n  policy             policy/policy.toml (signed; edit, then `krouter-admin policy sign`)\n  next               krouter-admin keys create --label NAME",
                home.display(),
                list(generated),
                list(supplied)
            )
        }
        Outcome::ApiKeyCreated {
            key,
            secret,
            written_to,
            replaces,
        } => {
            let mut out = format!(
                "created API key {} (label {}, group {}{})",
                key.id,
                key.label,
                key.group,
                key.expires
                    .as_deref()
                    .map(|e| format!(", expires {e}"))
                    .unwrap_or_default()
            );
            if let Some(old) = replaces {
                out.push_str(&format!(
                    "\n  replaces {} which stops working at {}",
                    old.id,
                    old.expires.as_deref().unwrap_or("?")
                ));
            }
            match (secret, written_to) {
                (Some(secret), _) => out.push_str(&format!(
                    "\n\n  {}\n\nThis is the only time the key is shown. Store it now.",
                    secret.0.expose_secret()
                )),
                (None, Some(path)) => out.push_str(&format!(
                    "\n  written to {} (0600); it is not shown",
                    path.display()
                )),
                (None, None) => {}
            }
            out
        }
        Outcome::Keys { keys } => table(
            &[
                "ID", "LABEL", "GROUP", "STATUS", "CREATED", "EXPIRES", "REVOKED",
            ],
            keys.iter()
                .map(|k| {
                    vec![
                        k.id.clone(),
                        k.label.clone(),
                        k.group.clone(),
                        k.status.to_owned(),
                        k.created.clone(),
                        k.expires.clone().unwrap_or_else(|| "-".to_owned()),
                        k.revoked.clone().unwrap_or_else(|| "-".to_owned()),
                    ]
                })
                .collect(),
        ),
        Outcome::KeyRevoked { key } => format!("revoked API key {} (label {})", key.id, key.label),
        Outcome::CredentialSet {
            name,
            kind,
            fingerprint,
        } => format!("stored credential {name} (kind {kind}, fingerprint {fingerprint})"),
        Outcome::Credentials { credentials } => table(
            &["NAME", "KIND", "FINGERPRINT", "CREATED", "UPDATED"],
            credentials
                .iter()
                .map(|c| {
                    vec![
                        c.name.clone(),
                        c.kind.to_owned(),
                        c.fingerprint.clone(),
                        c.created.clone(),
                        c.updated.clone(),
                    ]
                })
                .collect(),
        ),
        Outcome::CredentialRemoved { name } => format!("removed credential {name}"),
        Outcome::Migrated { from, to } if from == to => {
            format!("the store's schema is current (version {to})")
        }
        Outcome::Migrated { from, to } => {
            format!("migrated the store's schema from {from} to {to}")
        }
        Outcome::StoreVerified {
            schema,
            keys,
            credentials,
            audit_rows,
        } => format!(
            "store OK: schema {schema}, {keys} API key(s) intact, {credentials} credential(s) decrypt, {audit_rows} audit row(s) verify"
        ),
        Outcome::Rekeyed {
            credentials,
            key_file,
        } => {
            let mut out =
                format!("re-encrypted {credentials} credential(s) under the new storage key");
            match key_file {
                Some(path) => out.push_str(&format!("\n  the new key is in {}", path.display())),
                None => out.push_str(
                    "\n  update STORAGE_ENCRYPTION_KEY (or its _FILE) everywhere the store is used",
                ),
            }
            out
        }
        Outcome::BackedUp { out } => format!("backed up the store to {} (0600)", out.display()),
        Outcome::Audit { rows } => table(
            &["SEQ", "AT", "ACTOR", "ACTION", "TARGET", "OUTCOME"],
            rows.iter()
                .map(|r| {
                    vec![
                        r.seq.to_string(),
                        r.at.clone(),
                        r.actor.clone(),
                        r.action.clone(),
                        r.target.clone(),
                        r.outcome.clone(),
                    ]
                })
                .collect(),
        ),
        Outcome::AuditVerified { rows } => format!("audit log OK: {rows} row(s), chain intact"),
        Outcome::Usage(usage) => usage.human(),
    }
}

/// Left-aligned columns separated by two spaces.
fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    let mut out = vec![line(headers.iter().map(|h| (*h).to_owned()).collect())];
    if rows.is_empty() {
        out.push("(none)".to_owned());
    }
    out.extend(rows.into_iter().map(line));
    out.join("\n")
}

/// Items joined with commas, or `(none)`.
fn list(items: &[String]) -> String {
    if items.is_empty() {
        "(none)".to_owned()
    } else {
        items.join(", ")
    }
}

fn policy_table(summary: &Summary) -> String {
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

// === impl ShownOnce ===

impl fmt::Debug for ShownOnce {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ShownOnce([redacted])")
    }
}

impl Serialize for ShownOnce {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.0.expose_secret())
    }
}
