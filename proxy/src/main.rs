//! The `krouter` binary. Serving arrives with the proxy issue; until then it prints its
//! version and says so, and exits 2 (usage) for anything else.

use std::process::ExitCode;

fn main() -> ExitCode {
    let arg = std::env::args_os().nth(1);
    match arg.as_ref().and_then(|a| a.to_str()) {
        Some("--version" | "-V") => {
            println!("krouter {}", krouter_proxy::VERSION);
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!(
                "krouter {}: the proxy is not part of this release yet; \
                 use krouter-admin policy to keygen, sign, verify and check policies",
                krouter_proxy::VERSION
            );
            ExitCode::from(2)
        }
    }
}
