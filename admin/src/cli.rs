//! The command-line grammar: `krouter-admin [--json] <noun> <verb>`. No flag takes a secret;
//! secrets come from files the operator protects (or, later, stdin and a no-echo prompt).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// krouter-admin: keys, credentials, policy signing, store maintenance and usage reports for krouter.
#[derive(Debug, Parser)]
#[command(name = "krouter-admin", version, about, long_about = None)]
pub struct Cli {
    /// Print machine-readable JSON instead of tables and sentences.
    #[arg(long, global = true)]
    pub json: bool,
    /// What to manage.
    #[command(subcommand)]
    pub noun: Noun,
}

/// The things krouter-admin manages.
#[derive(Debug, Subcommand)]
pub enum Noun {
    /// Create a new krouter home: secrets, store, signing key, a signed starter policy, settings.
    Init,
    /// Client API keys: create, list, revoke, rotate.
    #[command(subcommand)]
    Keys(KeysVerb),
    /// Provider credentials, stored encrypted: set (from stdin or a no-echo prompt), list, remove.
    #[command(subcommand)]
    Credentials(CredentialsVerb),
    /// Create signing keys, and check, sign and verify policy files.
    #[command(subcommand)]
    Policy(PolicyVerb),
    /// Store maintenance: migrate, verify, rekey, backup.
    #[command(subcommand)]
    Store(StoreVerb),
    /// The store's append-only audit log: list, verify.
    #[command(subcommand)]
    Audit(AuditVerb),
    /// Requests, errors, tokens and latency from the proxy's state database (read-only).
    Usage(UsageArgs),
}

/// `krouter-admin keys ...`
#[derive(Debug, Subcommand)]
pub enum KeysVerb {
    /// Create a key; it is printed once (or written to --out) and never shown again.
    Create(KeysCreateArgs),
    /// List keys: ids, labels, groups, dates, status. Never a secret.
    List,
    /// Revoke a key now.
    Revoke(KeyIdArg),
    /// Issue a new key with the same label and group; the old one expires after --grace.
    Rotate(KeysRotateArgs),
}

/// Arguments of `keys create`.
#[derive(Debug, Args)]
pub struct KeysCreateArgs {
    /// A label for humans, such as a person's or a service's name.
    #[arg(long)]
    pub label: String,
    /// The policy group the key belongs to; the policy in force must define it.
    #[arg(long, default_value = "default")]
    pub group: String,
    /// Lifetime such as 90d, 12h or 30m; the key never expires without it.
    #[arg(long, value_name = "DURATION")]
    pub expires: Option<String>,
    /// Write the key to this new file (0600) instead of printing it.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

/// A key id argument.
#[derive(Debug, Args)]
pub struct KeyIdArg {
    /// The key's id (kid_...), as `keys list` shows it.
    #[arg(value_name = "ID")]
    pub id: String,
}

/// Arguments of `keys rotate`.
#[derive(Debug, Args)]
pub struct KeysRotateArgs {
    /// The key's id (kid_...).
    #[arg(value_name = "ID")]
    pub id: String,
    /// How long the old key keeps working, such as 24h (default) or 0s.
    #[arg(long, value_name = "DURATION", default_value = "24h")]
    pub grace: String,
    /// Write the new key to this new file (0600) instead of printing it.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

/// `krouter-admin credentials ...`
#[derive(Debug, Subcommand)]
pub enum CredentialsVerb {
    /// Store a provider credential; the value is read from stdin or a no-echo prompt.
    Set(CredentialSetArgs),
    /// List credentials: names, dates, fingerprints. Never a value.
    List,
    /// Remove a credential.
    Remove(CredentialNameArg),
}

/// Arguments of `credentials set`.
#[derive(Debug, Args)]
pub struct CredentialSetArgs {
    /// The credential's name, as the policy's `credential = "..."` refers to it.
    #[arg(value_name = "NAME")]
    pub name: String,
    /// The kind of provider it authenticates to.
    #[arg(long, value_enum, default_value_t = CredentialKindArg::Generic)]
    pub kind: CredentialKindArg,
}

/// The kinds `credentials set --kind` accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CredentialKindArg {
    /// An OpenAI API key.
    Openai,
    /// An Anthropic API key.
    Anthropic,
    /// A key for an OpenAI-compatible server.
    OpenaiCompatible,
    /// Anything else.
    Generic,
}

/// A credential name argument.
#[derive(Debug, Args)]
pub struct CredentialNameArg {
    /// The credential's name, as the policy's `credential = "..."` refers to it.
    #[arg(value_name = "NAME")]
    pub name: String,
}

/// `krouter-admin store ...`
#[derive(Debug, Subcommand)]
pub enum StoreVerb {
    /// Apply pending schema migrations.
    Migrate,
    /// Check the schema, decrypt every sealed field, and verify the audit chain.
    Verify,
    /// Re-encrypt everything under a new storage key (from stdin, a prompt, or --new-key-file).
    Rekey(RekeyArgs),
    /// Write a consistent copy of the store to a new 0600 file while it is in use.
    Backup(BackupArgs),
}

/// Arguments of `store rekey`.
#[derive(Debug, Args)]
pub struct RekeyArgs {
    /// Read the new storage key from this file (0600) instead of stdin.
    #[arg(long, value_name = "FILE")]
    pub new_key_file: Option<PathBuf>,
    /// Generate a random new storage key and write it to secrets/storage.key.
    #[arg(long, conflicts_with = "new_key_file")]
    pub generate: bool,
}

/// Arguments of `store backup`.
#[derive(Debug, Args)]
pub struct BackupArgs {
    /// The backup file to create; it must not exist.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
}

/// `krouter-admin audit ...`
#[derive(Debug, Subcommand)]
pub enum AuditVerb {
    /// List the audit log, oldest first.
    List,
    /// Verify the chain; names the first edited, inserted or deleted row and exits 3.
    Verify,
}

/// Arguments of `usage`.
#[derive(Debug, Args)]
pub struct UsageArgs {
    /// How far back to look: a number and a unit, such as 30m, 24h, 7d or 2w.
    #[arg(long, value_name = "DURATION", default_value = "7d")]
    pub since: String,
    /// What each row counts.
    #[arg(long, value_enum, default_value_t = UsageBy::Model)]
    pub by: UsageBy,
}

/// The groupings `usage --by` accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum UsageBy {
    /// The caller's API key id.
    Key,
    /// The key's policy group.
    Group,
    /// The model the client asked for.
    Model,
    /// The provider that answered.
    Provider,
    /// The UTC date.
    Day,
}

/// `krouter-admin policy ...`
#[derive(Debug, Subcommand)]
pub enum PolicyVerb {
    /// Create an Ed25519 policy signing key: DIR/policy-signing.key (0600) and DIR/policy-signing.pub.
    Keygen(KeygenArgs),
    /// Validate POLICY, then sign its exact bytes, writing POLICY.sig beside it.
    Sign(SignArgs),
    /// Verify POLICY's signature against the trusted keys, then validate it.
    Verify(VerifyArgs),
    /// Validate POLICY without a signature and print a short summary.
    Check(CheckArgs),
}

/// Arguments of `policy keygen`.
#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// Directory to create the key pair in (created 0700 if missing).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

/// Arguments of `policy sign`.
#[derive(Debug, Args)]
pub struct SignArgs {
    /// The policy file to sign.
    #[arg(value_name = "POLICY")]
    pub policy: PathBuf,
    /// The private signing key file (must be mode 0600).
    #[arg(long, value_name = "KEYFILE")]
    pub key: PathBuf,
}

/// Arguments of `policy verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The policy file to verify.
    #[arg(value_name = "POLICY")]
    pub policy: PathBuf,
    /// Directory of trusted public keys (*.pub).
    #[arg(long, value_name = "DIR")]
    pub trusted: PathBuf,
    /// The signature file, if not POLICY.sig.
    #[arg(long, value_name = "SIGFILE")]
    pub sig: Option<PathBuf>,
}

/// Arguments of `policy check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The policy file to validate.
    #[arg(value_name = "POLICY")]
    pub policy: PathBuf,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn the_grammar_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn the_documented_forms_parse() {
        for argv in [
            &["krouter-admin", "policy", "keygen", "--out", "d"][..],
            &["krouter-admin", "policy", "sign", "p.toml", "--key", "k"],
            &[
                "krouter-admin",
                "policy",
                "verify",
                "p.toml",
                "--trusted",
                "d",
            ],
            &["krouter-admin", "--json", "policy", "check", "p.toml"],
            &["krouter-admin", "policy", "check", "p.toml", "--json"],
            &["krouter-admin", "init"],
            &[
                "krouter-admin",
                "keys",
                "create",
                "--label",
                "ci",
                "--group",
                "g",
                "--expires",
                "90d",
            ],
            &["krouter-admin", "keys", "list", "--json"],
            &["krouter-admin", "keys", "revoke", "kid_x"],
            &["krouter-admin", "keys", "rotate", "kid_x", "--grace", "24h"],
            &["krouter-admin", "credentials", "set", "openai-main"],
            &[
                "krouter-admin",
                "credentials",
                "set",
                "openai-main",
                "--kind",
                "openai",
            ],
            &["krouter-admin", "credentials", "list"],
            &["krouter-admin", "credentials", "remove", "x"],
            &["krouter-admin", "store", "migrate"],
            &["krouter-admin", "store", "verify"],
            &["krouter-admin", "store", "rekey"],
            &["krouter-admin", "store", "backup", "--out", "b.sqlite"],
            &["krouter-admin", "audit", "list"],
            &["krouter-admin", "audit", "verify"],
            &["krouter-admin", "usage"],
            &["krouter-admin", "usage", "--since", "24h", "--by", "key"],
            &["krouter-admin", "usage", "--by", "day", "--json"],
        ] {
            assert!(Cli::try_parse_from(argv).is_ok(), "{argv:?}");
        }
        assert!(Cli::try_parse_from(["krouter-admin", "policy", "sign", "p.toml"]).is_err());
        assert!(Cli::try_parse_from(["krouter-admin", "usage", "--by", "week"]).is_err());
    }
}
