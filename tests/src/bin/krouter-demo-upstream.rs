//! `krouter-demo-upstream [--listen ADDR]`: the mock upstream of the test harness as a
//! standalone server, for the quickstart and for benchmarks.
//!
//! Serves plain HTTP (HTTP/1.1 and HTTP/2) on `ADDR` (default `127.0.0.1:20130`), accepts any
//! credential, records nothing and logs nothing, until SIGTERM or SIGINT. Exit codes: 0 after
//! a signal, 1 when the address cannot be bound, 64 for bad arguments.

use std::io::Write as _;
use std::net::SocketAddr;
use std::process::ExitCode;

use krouter_tests::upstream;
use tokio::net::TcpListener;

const USAGE: &str = "usage: krouter-demo-upstream [--listen ADDR]   (default 127.0.0.1:20130)";
const DEFAULT_LISTEN: &str = "127.0.0.1:20130";

fn main() -> ExitCode {
    let listen = match parse(std::env::args().skip(1)) {
        Ok(Some(listen)) => listen,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(problem) => {
            eprintln!("krouter-demo-upstream: {problem}\n{USAGE}");
            return ExitCode::from(64);
        }
    };
    match run(listen) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("krouter-demo-upstream: {error}");
            ExitCode::FAILURE
        }
    }
}

/// The listen address from the arguments; `None` when help was asked for.
fn parse(mut args: impl Iterator<Item = String>) -> Result<Option<SocketAddr>, String> {
    let mut listen = DEFAULT_LISTEN.to_owned();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-h" | "--help" => return Ok(None),
            "--listen" => {
                listen = args
                    .next()
                    .ok_or_else(|| "--listen needs an address".to_owned())?;
            }
            _ => match arg.strip_prefix("--listen=") {
                Some(value) => value.clone_into(&mut listen),
                None => return Err(format!("unexpected argument {arg:?}")),
            },
        }
    }
    listen
        .parse()
        .map(Some)
        .map_err(|_| format!("--listen {listen:?} is not an IP address and port"))
}

/// Binds, announces the URL and serves until a signal.
fn run(listen: SocketAddr) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listener = TcpListener::bind(listen).await.map_err(|error| {
            std::io::Error::new(error.kind(), format!("binding {listen}: {error}"))
        })?;
        let addr = listener.local_addr()?;
        let mut stdout = std::io::stdout().lock();
        writeln!(
            stdout,
            "krouter demo upstream listening on http://{addr}/v1"
        )?;
        stdout.flush()?;
        drop(stdout);
        upstream::serve(listener, shutdown_signal()).await;
        Ok(())
    })
}

/// Completes on SIGTERM or SIGINT (ctrl-c).
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut terminate) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = terminate.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
