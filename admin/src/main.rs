//! The `krouter-admin` binary: read the environment once, refuse secrets on the command
//! line, parse, run, print, exit with a documented code.

use std::process::ExitCode;

use clap::Parser as _;
use krouter_admin::cli::Cli;
use krouter_admin::exit::Status;
use krouter_admin::{Error, output};
use krouter_config::secret::load::Vars;
use krouter_policy::secret_like;

fn main() -> ExitCode {
    let json = std::env::args_os().any(|a| a == "--json");
    // A secret typed as an argument is already in shell history and `ps`; refuse it loudly
    // so the habit does not stick, before anything else happens.
    for (i, arg) in std::env::args_os().enumerate().skip(1) {
        if let Some(kind) = arg.to_str().and_then(secret_like::detect) {
            let error = Error::SecretArgument { position: i, kind };
            output::print_error(&error, json);
            return error.status().into();
        }
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _printed = e.print();
            return match e.exit_code() {
                0 => Status::Ok.into(),
                _ => Status::Usage.into(),
            };
        }
    };
    let vars = Vars::from_process();
    match krouter_admin::run(&cli, &vars) {
        Ok(outcome) => {
            output::print_outcome(&outcome, cli.json);
            Status::Ok.into()
        }
        Err(error) => {
            output::print_error(&error, cli.json);
            error.status().into()
        }
    }
}
