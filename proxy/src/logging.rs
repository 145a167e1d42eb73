//! Log output: `tracing` to standard error, one JSON object per line (default) or
//! human-readable lines, at INFO. Only metadata is ever logged; secrets have no `Display`
//! and redacted `Debug`, so they cannot reach a line by accident.

use std::io::IsTerminal as _;

use krouter_config::settings::LogFormat;
use tracing::Level;

/// Installs the global subscriber; a second call does nothing.
pub fn init(format: LogFormat) {
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(Level::INFO)
        .with_target(false);
    let _already = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .try_init(),
        LogFormat::Pretty => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
    };
}
