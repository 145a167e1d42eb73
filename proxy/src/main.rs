//! The `krouter` binary: parse, run, print, exit with a documented code (0 ok, 1 failed,
//! 2 usage, 3 signature, trust or integrity failure).

use std::io::Write as _;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use krouter_config::secret::load::Vars;

/// krouter: a hardened, minimal, self-hosted AI router.
#[derive(Debug, Parser)]
#[command(name = "krouter", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check settings, secrets, the store and the signed policy, and print the effective
    /// configuration (secrets shown only as where they come from). Writes nothing.
    Check,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _printed = e.print();
            return ExitCode::from(if e.exit_code() == 0 { 0 } else { 2 });
        }
    };
    let vars = Vars::from_process();
    match cli.command {
        Command::Check => match krouter_proxy::startup::load(&vars) {
            Ok(loaded) => {
                let _ = write!(
                    std::io::stdout().lock(),
                    "{}",
                    krouter_proxy::check::report(&loaded)
                );
                ExitCode::SUCCESS
            }
            Err(error) => {
                let mut lines = vec![format!("error: {error}")];
                let mut source = std::error::Error::source(&error);
                while let Some(cause) = source {
                    lines.push(format!("  caused by: {cause}"));
                    source = cause.source();
                }
                if let krouter_proxy::Error::Policy(krouter_policy::Error::Invalid(problems)) =
                    &error
                {
                    lines.extend(problems.lines().into_iter().map(|l| format!("  {l}")));
                }
                let _ = writeln!(std::io::stderr().lock(), "{}", lines.join("\n"));
                ExitCode::from(error.code())
            }
        },
    }
}
