//! Dispatch from the parsed command line to one function per verb.

mod policy;

use crate::cli::{Cli, Noun, PolicyVerb};
use crate::error::Error;
use crate::output::Outcome;

/// Runs one command. Nothing is printed here; the caller renders the outcome or the error.
pub fn run(cli: &Cli) -> Result<Outcome, Error> {
    match &cli.noun {
        Noun::Policy(verb) => match verb {
            PolicyVerb::Keygen(args) => policy::keygen(args),
            PolicyVerb::Sign(args) => policy::sign(args),
            PolicyVerb::Verify(args) => policy::verify(args),
            PolicyVerb::Check(args) => policy::check(args),
        },
    }
}
