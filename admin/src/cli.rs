//! The command-line grammar: `krouter-admin [--json] <noun> <verb>`. No flag takes a secret;
//! secrets come from files the operator protects (or, later, stdin and a no-echo prompt).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// krouter-admin: keys, credentials, policy signing and store maintenance for krouter.
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
    /// Create signing keys, and check, sign and verify policy files.
    #[command(subcommand)]
    Policy(PolicyVerb),
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
        ] {
            assert!(Cli::try_parse_from(argv).is_ok(), "{argv:?}");
        }
        assert!(Cli::try_parse_from(["krouter-admin", "policy", "sign", "p.toml"]).is_err());
    }
}
