//! The `krouter-admin` binary: parse, run, print, exit with a documented code.

use std::process::ExitCode;

use clap::Parser as _;
use krouter_admin::cli::Cli;
use krouter_admin::exit::Status;
use krouter_admin::output;

fn main() -> ExitCode {
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
    match krouter_admin::run(&cli) {
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
