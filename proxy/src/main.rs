//! The `krouter` binary: parse, run, print, exit with a documented code (0 ok, 1 failed,
//! 2 usage, 3 signature, trust or integrity failure, 4 the sandbox is required and not fully
//! enforced).

use std::io::Write as _;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use krouter_config::secret::load::Vars;
use krouter_proxy::sandbox::{self, Plan};

/// krouter: a hardened, minimal, self-hosted AI router.
#[derive(Debug, Parser)]
#[command(
    name = "krouter",
    version,
    about,
    long_about = None,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Refuse to serve unless the kernel fully enforces the sandbox (as `krouter serve
    /// --require-sandbox`).
    #[arg(long)]
    require_sandbox: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve clients (the default): load and check everything, enter the sandbox, then listen.
    Serve {
        /// Refuse to serve unless the kernel fully enforces the sandbox (also the setting
        /// `require_sandbox = true`, or KROUTER_REQUIRE_SANDBOX=true); exit 4 otherwise.
        #[arg(long)]
        require_sandbox: bool,
    },
    /// Check settings, secrets, the store and the signed policy, and print the effective
    /// configuration (secrets shown only as where they come from). Writes nothing.
    Check {
        /// Also apply the sandbox serving would run in to this check and prove that it holds:
        /// writes outside the state directory and a connect to a port it does not allow fail.
        #[arg(long)]
        sandbox: bool,
    },
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
    let command = cli.command.unwrap_or(Command::Serve {
        require_sandbox: cli.require_sandbox,
    });
    let result = match command {
        Command::Check { sandbox } => check(&vars, sandbox),
        Command::Serve { require_sandbox } => serve(vars, require_sandbox),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let _ = writeln!(std::io::stderr().lock(), "{}", describe(&error));
            ExitCode::from(error.code())
        }
    }
}

fn check(vars: &Vars, sandbox: bool) -> Result<(), krouter_proxy::Error> {
    let loaded = krouter_proxy::startup::load(vars)?;
    let mut out = std::io::stdout().lock();
    let _ = write!(out, "{}", krouter_proxy::check::report(&loaded));
    if sandbox {
        krouter_proxy::check::sandbox(&loaded, &mut out)?;
    }
    Ok(())
}

/// Load, sandbox, log, run. The order matters: the sandbox covers only threads created after
/// it, so nothing before it may start a thread (the log writer and the runtime come after),
/// and what the sandbox forbids (the cgroup files that say how many CPUs this process may
/// use) is read before it.
fn serve(vars: Vars, require_sandbox: bool) -> Result<(), krouter_proxy::Error> {
    let loaded = krouter_proxy::startup::load(&vars)?;
    let plan = Plan::for_start(&loaded);
    // One CPU (a pinned process, a container with a one-CPU quota): one thread runs
    // everything, without the work-stealing scheduler's cross-thread wake-ups.
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let applied = sandbox::apply(&plan)?;
    if require_sandbox || loaded.settings.require_sandbox() {
        sandbox::require(&applied.status)?;
    }
    let _log = krouter_proxy::logging::init(loaded.settings.log_format());
    applied.log(&plan);
    let mut builder = if cpus > 1 {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(cpus);
        builder
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
        applied.enforced_connect(&plan),
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
