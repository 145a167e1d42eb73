//! Dispatch from the parsed command line to one function per verb. Every verb that changes
//! the store runs in one store transaction that also appends its audit row; `usage` only
//! reads the proxy's state database.

mod audit;
mod credentials;
mod init;
mod keys;
mod policy;
mod store;
mod usage;

use krouter_config::secret::load::Vars;
use krouter_config::store::AuditEntry;

use crate::cli::{AuditVerb, Cli, CredentialsVerb, KeysVerb, Noun, PolicyVerb, StoreVerb};
use crate::context::Context;
use crate::error::Error;
use crate::output::Outcome;

/// Runs one command with the variables read once in `main`. Nothing is printed here; the
/// caller renders the outcome or the error.
pub fn run(cli: &Cli, vars: &Vars) -> Result<Outcome, Error> {
    match &cli.noun {
        Noun::Policy(verb) => match verb {
            PolicyVerb::Keygen(args) => policy::keygen(args),
            PolicyVerb::Sign(args) => policy::sign(args),
            PolicyVerb::Verify(args) => policy::verify(args),
            PolicyVerb::Check(args) => policy::check(args),
        },
        Noun::Init => init::init(&Context::new(vars)?),
        Noun::Keys(verb) => {
            let ctx = Context::new(vars)?;
            match verb {
                KeysVerb::Create(args) => keys::create(&ctx, args),
                KeysVerb::List => keys::list(&ctx),
                KeysVerb::Revoke(args) => keys::revoke(&ctx, args),
                KeysVerb::Rotate(args) => keys::rotate(&ctx, args),
            }
        }
        Noun::Credentials(verb) => {
            let ctx = Context::new(vars)?;
            match verb {
                CredentialsVerb::Set(args) => credentials::set(&ctx, args),
                CredentialsVerb::List => credentials::list(&ctx),
                CredentialsVerb::Remove(args) => credentials::remove(&ctx, args),
            }
        }
        Noun::Store(verb) => {
            let ctx = Context::new(vars)?;
            match verb {
                StoreVerb::Migrate => store::migrate(&ctx),
                StoreVerb::Verify => store::verify(&ctx),
                StoreVerb::Rekey(args) => store::rekey(&ctx, args),
                StoreVerb::Backup(args) => store::backup(&ctx, args),
            }
        }
        Noun::Audit(verb) => {
            let ctx = Context::new(vars)?;
            match verb {
                AuditVerb::List => audit::list(&ctx),
                AuditVerb::Verify => audit::verify(&ctx),
            }
        }
        Noun::Usage(args) => usage::report(&Context::new(vars)?, args),
    }
}

/// The audit row of a successful command.
fn entry(action: &str, target: &str) -> AuditEntry {
    AuditEntry {
        action: action.to_owned(),
        target: target.to_owned(),
        outcome: "ok".to_owned(),
    }
}
