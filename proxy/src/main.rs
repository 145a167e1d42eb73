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
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve clients (the default): load and check everything, then listen.
    Serve,
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
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Check => krouter_proxy::startup::load(&vars).map(|loaded| {
            let _ = write!(
                std::io::stdout().lock(),
                "{}",
                krouter_proxy::check::report(&loaded)
            );
        }),
        Command::Serve => serve(vars),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let _ = writeln!(std::io::stderr().lock(), "{}", describe(&error));
            ExitCode::from(error.code())
        }
    }
}

fn serve(vars: Vars) -> Result<(), krouter_proxy::Error> {
    let loaded = krouter_proxy::startup::load(&vars)?;
    let _log = krouter_proxy::logging::init(loaded.settings.log_format());
    // One CPU (a pinned process, a container with a one-CPU quota): one thread runs
    // everything, without the work-stealing scheduler's cross-thread wake-ups.
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let mut builder = if cpus > 1 {
        tokio::runtime::Builder::new_multi_thread()
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    let runtime = builder
        .enable_all()
        .thread_name("krouter-worker")
        .build()
        .map_err(|source| krouter_proxy::Error::Start {
            what: "the async runtime",
            source,
        })?;
    runtime.block_on(krouter_proxy::run(
        loaded,
        vars,
        krouter_proxy::serve::signal(),
    ))
}

/// The error, its causes, and every policy problem, one per line.
fn describe(error: &krouter_proxy::Error) -> String {
    let mut lines = vec![format!("error: {error}")];
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        lines.push(format!("  caused by: {cause}"));
        source = cause.source();
    }
    if let krouter_proxy::Error::Policy(krouter_policy::Error::Invalid(problems)) = error {
        lines.extend(problems.lines().into_iter().map(|l| format!("  {l}")));
    }
    lines.join("\n")
}
